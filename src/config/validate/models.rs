//! `[onnxruntime]`, `[student]`, `[teacher]` and `[compare]`: the library, each model and how to
//! run it, and how teacher and student outputs are compared.

use std::path::PathBuf;
use std::time::Duration;

use super::super::raw::{self, RawModel};
use super::super::{
    CompareConfig, ModelConfig, NonFinitePolicy, OnnxRuntimeConfig, OutputKind, Pooling, Task,
};
use super::Check;

const DEFAULT_THREADS: i64 = 1;
const DEFAULT_MAX_BATCH: i64 = 32;
const MAX_BATCH_LIMIT: i64 = 4096;
const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(20);
const DEFAULT_OUTPUT: &str = "logits";

impl Check<'_> {
    pub(super) fn onnxruntime(&mut self, raw: raw::RawOnnxRuntime) -> OnnxRuntimeConfig {
        OnnxRuntimeConfig {
            library: raw
                .library
                .map(|library| self.path("onnxruntime.library", library)),
        }
    }

    pub(super) fn model(&mut self, section: &str, raw: RawModel) -> ModelConfig {
        let key = |name: &str| format!("{section}.{name}");
        let path = match raw.path {
            Some(path) => self.path(&key("path"), path),
            None => {
                self.problem(
                    &key("path"),
                    format!("required: the {section} model's .onnx file"),
                );
                PathBuf::new()
            }
        };
        let threads = self.integer(&key("threads"), raw.threads, DEFAULT_THREADS, 1, 1024);
        let max_batch = self.integer(
            &key("max_batch"),
            raw.max_batch,
            DEFAULT_MAX_BATCH,
            1,
            MAX_BATCH_LIMIT,
        );
        let max_wait = self.duration(
            &key("max_wait"),
            raw.max_wait,
            DEFAULT_MAX_WAIT,
            Duration::ZERO,
        );
        let inputs = self.names(&key("inputs"), raw.inputs.unwrap_or_default());
        let (output, attention) = self.outputs(section, raw.output, raw.attention);
        ModelConfig {
            path,
            threads,
            max_batch,
            max_wait,
            inputs,
            output,
            attention,
        }
    }

    /// A non-empty name; `default` when absent.
    /// A model's compared output and optional attention output, under `section`; the two must
    /// differ.
    pub(super) fn outputs(
        &mut self,
        section: &str,
        output: Option<String>,
        attention: Option<String>,
    ) -> (String, Option<String>) {
        let output = self.name(&format!("{section}.output"), output, DEFAULT_OUTPUT);
        let attention_key = format!("{section}.attention");
        let attention = attention.map(|attention| self.name(&attention_key, Some(attention), ""));
        if attention.as_deref() == Some(output.as_str()) && !output.is_empty() {
            self.problem(
                &attention_key,
                format!("must differ from {section}.output (both are \"{output}\")"),
            );
        }
        (output, attention)
    }

    pub(super) fn compare(&mut self, raw: raw::RawCompare) -> CompareConfig {
        let task = self.choice(
            "compare.task",
            raw.task,
            Task::Classification,
            &[
                ("classification", Task::Classification),
                ("embedding", Task::Embedding),
                ("regression", Task::Regression),
            ],
        );
        let output_kind = self.choice(
            "compare.output_kind",
            raw.output_kind,
            OutputKind::Logits,
            &[
                ("logits", OutputKind::Logits),
                ("probabilities", OutputKind::Probabilities),
            ],
        );
        if output_kind != OutputKind::Logits && task != Task::Classification {
            self.problem(
                "compare.output_kind",
                "only applies to compare.task = \"classification\"",
            );
        }
        let pooling = self.choice(
            "compare.pooling",
            raw.pooling,
            Pooling::None,
            &[("none", Pooling::None), ("mean", Pooling::Mean)],
        );
        if pooling != Pooling::None && task != Task::Embedding {
            self.problem(
                "compare.pooling",
                "only applies to compare.task = \"embedding\"",
            );
        }
        let mask_input = raw
            .mask_input
            .map(|mask| self.name("compare.mask_input", Some(mask), ""));
        if mask_input.is_some() && pooling != Pooling::Mean {
            self.problem("compare.mask_input", "requires compare.pooling = \"mean\"");
        }
        let non_finite = self.choice(
            "compare.non_finite",
            raw.non_finite,
            NonFinitePolicy::Reject,
            &[
                ("reject", NonFinitePolicy::Reject),
                ("allow", NonFinitePolicy::Allow),
            ],
        );
        CompareConfig {
            task,
            output_kind,
            pooling,
            mask_input,
            non_finite,
        }
    }
}
