//! Integration tests: the real `sensei` binary, the real ONNX Runtime, real SQLite files.

mod common;
mod suite;
