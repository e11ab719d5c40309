//! What the training loop reports. Progress lines and metrics.jsonl are observers of these.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        start_step: usize,
        train_examples: usize,
        valid_examples: usize,
        train_target_tokens: usize,
        trainable_params: usize,
        /// Processes training together (data-parallel ranks; 1 for one process).
        world_size: usize,
        /// Examples dropped because truncation left them no target (train, valid).
        skipped_untrainable: (usize, usize),
        /// Train examples longer than max_seq_len that lost tokens.
        truncated: usize,
    },
    Step {
        step: usize,
        total_steps: usize,
        /// Mean loss per target token of this optimizer step.
        loss: f64,
        lr: f64,
        grad_norm: f64,
        target_tokens: usize,
        tokens: usize,
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    Eval {
        step: usize,
        loss: f64,
        perplexity: f64,
        tokens: usize,
        /// The task metric (`train.eval_metric`) over the valid rows, when one is asked for:
        /// its name and value.
        #[serde(skip_serializing_if = "Option::is_none")]
        metric: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metric_value: Option<f64>,
        /// Whether this evaluation is the best so far by `train.eval_metric`.
        best: bool,
    },
    /// A greedy completion of a held-out prompt, at an evaluation.
    Sample {
        step: usize,
        /// The valid file's line.
        line: usize,
        prompt: String,
        output: String,
        reference: String,
    },
    Checkpoint {
        step: usize,
        path: String,
    },
    Finished {
        step: usize,
        adapter: String,
        /// The eval loss and task metric at the best evaluation (by `train.eval_metric`).
        best_eval_loss: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        best_eval_metric: Option<f64>,
        /// What picked the best evaluation (`train.eval_metric`).
        eval_metric: String,
        best_step: Option<usize>,
        train_seconds: f64,
        cpu_seconds: f64,
        stopped_early: bool,
    },
}
