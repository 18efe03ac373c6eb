mod alerts;
mod check;
mod daemon;
mod drift;
mod ops;
mod replay;
