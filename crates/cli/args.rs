//! The command line, as ../shared/DESIGN.md's contract names it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data_args::DataArgs;
use crate::model_args::{InferenceWeights, ModelArgs};
use crate::task_args::TaskArgs;
use crate::value_parsers::{at_least_one, gguf_quant, input_file};

/// `tuna --version`: the release, the commit it was built from and the cargo features built
/// in (GPU backends, MPI); both recorded by build.rs.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TUNA_COMMIT"),
    "; features: ",
    env!("TUNA_FEATURES"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tuna",
    version = VERSION,
    about = "Fine-tune (LoRA) and evaluate Llama-family models locally, and measure prompting against tuning"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt (streams to stdout; stats to stderr).
    Generate(GenerateArgs),
    /// Talk to the model (and the tuned one) turn by turn through its chat template: lines on
    /// stdin are user turns; /reset, /system TEXT and /quit are commands.
    Chat(ChatArgs),
    /// Loss and perplexity on a JSONL file (any record kind; the training loss mask), and
    /// with --strategies or --metric task metrics per prompting strategy and for the adapter.
    Eval(Box<EvalArgs>),
    /// Prompting strategies vs the tuned adapter on a test set: report.md, report.html,
    /// report.json. With --prompt: one prompt, answered by the base, the tuned model and
    /// each --also-adapter in turn.
    Compare(Box<CompareArgs>),
    /// Base + adapter merged into a Hugging Face model directory (and optionally a GGUF file).
    Export(ExportArgs),
    /// LoRA fine-tuning: writes a run directory with checkpoints and a PEFT adapter.
    Train(Box<TrainArgs>),
    /// The whole study in one directory: train the adapter (one run per --seeds), then
    /// compare every prompting strategy with it; a second run reuses what is done.
    Study(Box<StudyArgs>),
    /// Check datasets and see what training will train on.
    #[command(subcommand)]
    Data(DataCommand),
    /// Measure speed and memory.
    Bench(BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Counts, token lengths, truncation, trained fraction, duplicates; every error as
    /// file:line: field: reason. Exit code 1 when any file has errors.
    Validate(DataValidateArgs),
    /// The first records as the model sees them, trained-on spans marked, with token ids.
    Preview(DataPreviewArgs),
}

#[derive(Debug, Args)]
pub struct DataValidateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub encoding: DataArgs,
    /// JSONL files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON array of per-file reports on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DataPreviewArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub encoding: DataArgs,
    #[arg(value_parser = input_file)]
    pub file: PathBuf,
    /// Records to show.
    #[arg(long = "limit", short = 'n', default_value_t = 3)]
    pub n: usize,
    /// One JSON array on stdout: per example its line, token count and runs of (trained,
    /// text, ids).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// > 1 discourages repeating tokens from the last 64.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Seeds the sampling (with --temperature above 0).
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (else --prompt-file, else stdin).
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long, value_parser = input_file)]
    pub prompt_file: Option<PathBuf>,
    /// Render the prompt as a user turn with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(
        long = "system-prompt",
        alias = "system",
        value_name = "TEXT",
        requires = "chat"
    )]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// How projection weights are held while generating (default: file for a .gguf model,
    /// its own blocks; f16 for other sources).
    #[arg(long, value_enum)]
    pub weights: Option<InferenceWeights>,
    /// Print the text and the stats as one JSON object on stdout (instead of streaming).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Answer every turn with the base model and then the tuned one (--adapter), each
    /// keeping its own side of the conversation.
    #[arg(long)]
    pub compare: bool,
    /// System message (default: the adapter run's, else none); /system TEXT changes it.
    #[arg(long, alias = "system", value_name = "TEXT")]
    pub system_prompt: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// How projection weights are held (default: file for a .gguf model, f16 otherwise).
    #[arg(long, value_enum)]
    pub weights: Option<InferenceWeights>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL file: text, prompt/completion, messages or alpaca records.
    #[arg(long, value_parser = input_file)]
    pub data: PathBuf,
    /// Score at most this many records.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub encoding: DataArgs,
    /// Tokens per forward batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    /// How projection weights are held while scoring.
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: InferenceWeights,
    /// Task metrics too, per prompting strategy and for the adapter (--strategies or
    /// --metric turns them on; the prompting strategies run on the base model, tuned and
    /// hybrid on base + --adapter).
    #[command(flatten)]
    pub task: TaskArgs,
    /// Print {"loss", "perplexity", "tokens", ..., "strategies": [...]} as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Test JSONL: prompt/completion, instruction/output or messages records (the last
    /// assistant turn is the reference).
    #[arg(value_parser = input_file, long, required_unless_present = "prompt")]
    pub data: Option<PathBuf>,
    /// Report directory (report.md, report.html, report.json).
    #[arg(long, required_unless_present = "prompt")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Score the first N test examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// How the frozen projections are held, for every arm alike (default for the scoring:
    /// bf16 where the processor has AMX or AVX512-BF16, else f32; with --prompt,
    /// generation's default: file for a .gguf model, else f16).
    #[arg(long, value_enum)]
    pub weights: Option<InferenceWeights>,
    /// A file of instruction variants separated by lines of `---`: each is tried zero-shot on
    /// the valid split and the best words every prompting strategy (prompting's fair shot).
    #[arg(long, value_parser = input_file)]
    pub instructions: Option<PathBuf>,
    /// The split the instruction sweep scores (default: the adapter run's valid file, else
    /// valid.jsonl beside the test file).
    #[arg(long, value_parser = input_file)]
    pub valid: Option<PathBuf>,
    /// Valid rows per instruction variant.
    #[arg(long, default_value_t = 100)]
    pub sweep_limit: usize,
    /// System message for the prompting strategies (default: the adapter run's).
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Rows of the side-by-side table.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// More adapters for the same base (a directory, run directory or hub id; repeatable):
    /// each is scored like the tuned strategy, as a row of its own.
    #[arg(long = "also-adapter", value_name = "ADAPTER")]
    pub also_adapters: Vec<PathBuf>,
    /// The training seeds of --adapter and of each --also-adapter, when these are one
    /// training run repeated with other seeds (tuna study does this): the report gives the
    /// tuned number's spread and whether the verdict holds on every seed.
    #[arg(long, value_delimiter = ',', requires = "also_adapters")]
    pub training_seeds: Vec<u64>,
    /// Keep each scored strategy in DIR and reuse it when the same strategy is asked for
    /// again with the same model, adapter, data, wording and settings (tuna study keeps its
    /// scores in OUTPUT/scores).
    #[arg(long, value_name = "DIR")]
    pub score_cache: Option<PathBuf>,
    /// One prompt, base and tuned answers streamed one after the other.
    #[arg(long)]
    pub prompt: Option<String>,
    /// With --prompt: render it through the chat template.
    #[arg(long)]
    pub chat: bool,
    /// Rename a record field, e.g. --field prompt=question --field completion=answer.
    #[arg(long = "field", value_name = "KIND=NAME")]
    pub fields: Vec<String>,
    /// Print the report as JSON on stdout too.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StudyArgs {
    /// A .gguf file, a Hugging Face model directory or a hub id.
    #[arg(long, env = "TUNA_MODEL", default_value = crate::model_args::DEFAULT_MODEL)]
    pub model: String,
    /// cpu, cuda, cuda:N, metal, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training JSONL: what the adapter trains on, and where shots and labels come from.
    #[arg(long, value_parser = input_file)]
    pub train: PathBuf,
    /// Test JSONL: every strategy is scored on it.
    #[arg(long, value_parser = input_file)]
    pub test: PathBuf,
    /// Held-out JSONL: evaluation during training, and the instruction sweep.
    #[arg(long, value_parser = input_file)]
    pub valid: Option<PathBuf>,
    /// The study directory (seed-N/ runs, report/, study.json).
    #[arg(long)]
    pub output: PathBuf,
    /// Adapters trained, each with its own training seed: the report gives the spread across
    /// them and whether the verdict holds on every one.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub seeds: usize,
    /// The first training seed (the others follow it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub training: StudyTrainingArgs,
    #[command(flatten)]
    pub compare: StudyCompareArgs,
}

/// The training flags a study passes on to `tuna train` (see `tuna train --help`).
#[derive(Debug, Args)]
pub struct StudyTrainingArgs {
    /// A training config (see configs/smollm2-135m-lora.toml); the flags below override it.
    #[arg(short = 'c', long = "config", value_parser = input_file)]
    pub config: Option<PathBuf>,
    /// Optimizer steps per adapter (default: the config's, else one epoch).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Passes over the training data, when --max-steps is not given.
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<f64>,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA scale numerator (alpha / r).
    #[arg(long, allow_negative_numbers = true)]
    pub lora_alpha: Option<f64>,
    /// Training examples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longest training example in tokens.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// all-linear, or a list such as q_proj,v_proj.
    #[arg(long)]
    pub target_modules: Option<String>,
    /// Wraps prompts of prompt/completion records in training, e.g. "Review: {prompt}".
    #[arg(long)]
    pub prompt_template: Option<String>,
    /// System message for training records that have none.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// How the frozen projections are held while training (tuna train --weights).
    #[arg(long = "train-weights", value_enum)]
    pub train_weights: Option<InferenceWeights>,
    /// What picks each adapter's best/ checkpoint (tuna train --eval-metric).
    #[arg(long, value_name = "METRIC", value_parser = clap::builder::PossibleValuesParser::new(tuna_train::task_metric::EVAL_METRICS))]
    pub eval_metric: Option<String>,
}

/// The scoring flags a study passes on to `tuna compare` (see `tuna compare --help`).
#[derive(Debug, Args)]
pub struct StudyCompareArgs {
    /// Comma-separated strategies (default: zero,one,few,cot,tuned,hybrid).
    #[arg(long)]
    pub strategies: Option<String>,
    /// Shots for few-shot and hybrid.
    #[arg(long)]
    pub shots: Option<usize>,
    /// Seeded draws of shots per strategy that shows some.
    #[arg(long)]
    pub shot_draws: Option<u64>,
    /// Score the first N test examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Chain-of-thought on the first N test examples at most.
    #[arg(long)]
    pub cot_limit: Option<usize>,
    /// Instruction variants (separated by lines of ---) swept zero-shot on --valid.
    #[arg(long, value_parser = input_file)]
    pub instructions: Option<PathBuf>,
    /// Metrics, comma-separated, the first the headline.
    #[arg(long)]
    pub metric: Option<String>,
    /// The label set, comma-separated.
    #[arg(long)]
    pub labels: Option<String>,
    /// Rows of the side-by-side table.
    #[arg(long)]
    pub samples: Option<usize>,
    /// How the frozen projections are held while scoring (tuna compare --weights).
    #[arg(long = "score-weights", value_enum)]
    pub score_weights: Option<InferenceWeights>,
    /// Leave out test rows whose input also appears in the train split.
    #[arg(long)]
    pub exclude_leaks: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The model directory to write (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    pub output: PathBuf,
    /// Fold the adapter into the weights. This is what export does (also without the flag):
    /// the outputs are plain models that need no adapter.
    #[arg(long)]
    pub merge: bool,
    /// Also write OUTPUT/model-<quant>.gguf for llama.cpp and Ollama.
    #[arg(long)]
    pub gguf: bool,
    /// Write only OUTPUT/adapter.gguf: the adapter unmerged, as the GGUF LoRA that llama.cpp
    /// loads over the same base file (`llama-cli -m BASE.gguf --lora OUTPUT/adapter.gguf`).
    #[arg(long, conflicts_with_all = ["gguf", "merge"])]
    pub lora_gguf: bool,
    /// GGUF tensor encoding: f16, q8_0 or q4_k (q4_k falls back to q8_0 for rows not a
    /// multiple of 256 wide).
    #[arg(long, default_value = "f16", requires = "gguf", value_parser = gguf_quant)]
    pub quant: tuna_model::export::GgufQuant,
    /// Replace an existing non-empty OUTPUT (only once the new export is complete).
    #[arg(long)]
    pub force: bool,
    /// Print the files written as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Batch-1 greedy generation: prompt and generation tokens/s, peak RSS.
    Generate(BenchGenerateArgs),
    /// Reading, encoding and batching a dataset: tokens/s, peak RSS.
    Data(BenchDataArgs),
    /// LoRA training steps on seeded random tokens (the reference's workload): tokens/s,
    /// forward/backward/optimizer split, peak RSS.
    Train(BenchTrainArgs),
    /// Scoring: the forward (logits and loss of every position) over chunks of seeded
    /// random tokens, as llama-perplexity and `tuna eval` run it: tokens/s, peak RSS.
    Score(BenchScoreArgs),
}

#[derive(Debug, Args)]
pub struct BenchScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens per chunk (one forward each).
    #[arg(long = "seq-len", alias = "seq", value_name = "N", default_value_t = 512, value_parser = at_least_one)]
    pub seq: usize,
    /// Chunks per repetition.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub chunks: usize,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub reps: usize,
    /// How the frozen projections are held.
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: InferenceWeights,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences per step.
    #[arg(long = "batch-size", alias = "batch", value_name = "N", default_value_t = 4, value_parser = at_least_one)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long = "seq-len", alias = "seq", value_name = "N", default_value_t = 256, value_parser = at_least_one)]
    pub seq: usize,
    /// Micro-batches per optimizer step (tokens/s counts all of them).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub grad_accum: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub steps: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    /// LoRA scale numerator: the update is scaled by alpha / r.
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// How the frozen projections are held (f32: the load dtype).
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: InferenceWeights,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reference: ReferenceArgs,
}

#[derive(Debug, Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub encoding: DataArgs,
    /// JSONL file (default: the full VADER train split from scripts/fetch-data.sh).
    #[arg(value_parser = input_file, default_value = "data/sentiment/train.jsonl")]
    pub file: PathBuf,
    /// Examples per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub reps: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens (seeded random ids).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub prompt_tokens: usize,
    /// Tokens generated per repetition.
    #[arg(long = "max-new-tokens", alias = "new-tokens", value_name = "N", default_value_t = 128, value_parser = at_least_one)]
    pub new_tokens: usize,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub reps: usize,
    /// How projection weights are held (default: file for a .gguf model, f16 otherwise).
    #[arg(long, value_enum)]
    pub weights: Option<InferenceWeights>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reference: ReferenceArgs,
}

/// The PyTorch + PEFT reference (../shared/bench), run right after tuna on the same shapes.
#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// Python of a venv with torch, transformers and peft (see ../shared/bench/README.md).
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
    #[arg(long, default_value = "../shared/bench/peft_cpu_baseline.py")]
    pub reference_script: PathBuf,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML config (see configs/smollm2-135m-lora.toml); flags override it.
    #[arg(value_parser = input_file, short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: TrainModelArgs,
    /// Training JSONL (any record kind).
    #[arg(long, value_parser = input_file)]
    pub data: Option<PathBuf>,
    /// Held-out JSONL for evaluation during training.
    #[arg(long, value_parser = input_file)]
    pub valid: Option<PathBuf>,
    /// Hold out this share of --data (by hash of each record) when there is no --valid.
    #[arg(long, allow_negative_numbers = true)]
    pub valid_fraction: Option<f64>,
    /// The run directory.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Optimizer steps (0: --epochs passes over the data).
    #[arg(long, conflicts_with = "epochs")]
    pub max_steps: Option<usize>,
    /// Passes over the training data, when --max-steps is 0.
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (the loss is averaged over all their target tokens).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate (AdamW, cosine schedule after warmup).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Longest example in tokens; longer ones are truncated (text records are windowed).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA scale numerator: the update is scaled by alpha / r.
    #[arg(long, allow_negative_numbers = true)]
    pub lora_alpha: Option<f64>,
    /// all-linear, or a list such as q_proj,v_proj.
    #[arg(long)]
    pub target_modules: Option<String>,
    /// Evaluate on the valid split every N steps (0: only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// What picks best/ (and early stopping): the valid loss, or a task metric scored on the
    /// valid split as `tuna compare` scores the tuned adapter (labels ranked for a label
    /// task, greedy answers otherwise); costs one scoring pass over the valid split per eval.
    #[arg(long, value_name = "METRIC", value_parser = clap::builder::PossibleValuesParser::new(tuna_train::task_metric::EVAL_METRICS))]
    pub eval_metric: Option<String>,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Seeds LoRA's initialization, the data order, the valid split and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Wraps prompts of prompt/completion records, e.g. "Review: {prompt}".
    #[arg(long)]
    pub prompt_template: Option<String>,
    /// System message for chat records that have none.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Worked examples before each prompt: K other records of the same file as earlier
    /// turns, only the record's own completion trained (matches few-shot prompting: the
    /// adapter is then compared prompted with K shots).
    #[arg(long, value_name = "K")]
    pub train_shots: Option<usize>,
    /// Start from this adapter with a fresh optimizer (training on new data).
    #[arg(long, conflicts_with = "resume")]
    pub init_adapter: Option<PathBuf>,
    /// How the frozen projections are held: f32, bf16 (AMX tiles where the processor has
    /// them), q8_0, q4_k, or file (the GGUF's own blocks: QLoRA over the file, memory about
    /// the file's size).
    #[arg(long, value_enum)]
    pub weights: Option<InferenceWeights>,
    /// Train on this many records of --data (a seeded subset; 0: all).
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// A learning curve: one run per size, on nested seeded subsets of --data, into
    /// OUTPUT/size-N/ (e.g. 100,400,1600); `tuna compare --adapter OUTPUT` then charts them.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["resume", "train_subset"])]
    pub train_sizes: Vec<usize>,
    /// Continue the run in this directory exactly where its last checkpoint left it. The
    /// run's config.toml decides everything: a flag may repeat what it holds, and
    /// --max-steps past the last checkpoint continues a finished run to that step; any
    /// other change is refused.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Data-parallel on this machine: runs N ranks under `mpirun -n N` (the `mpi` build),
    /// each on its share of the cores and of every batch; the same command trains the same
    /// adapter at any N. (Launching `mpirun -n N tuna train ...` or `srun` yourself does the
    /// same across machines.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nproc: Option<u32>,
    /// No progress lines (metrics.jsonl is still written).
    #[arg(long)]
    pub quiet: bool,
    /// Print the run as one JSON object on stdout when it ends (one per size with
    /// --train-sizes): run directory, adapter and final trainer state.
    #[arg(long)]
    pub json: bool,
}

/// --model for training: optional, since a config file can name it.
#[derive(Debug, Clone, Args)]
pub struct TrainModelArgs {
    /// A .gguf file, a Hugging Face model directory or a hub id.
    #[arg(long, env = "TUNA_MODEL")]
    pub model: Option<String>,
    /// cpu, cuda, cuda:N, metal, or auto (a GPU when the build has one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    pub dtype: Option<crate::model_args::DtypeArg>,
}

impl TrainModelArgs {
    pub fn load_as(
        &self,
        weights: tuna_model::WeightFormat,
    ) -> anyhow::Result<tuna_model::Pretrained> {
        ModelArgs {
            model: self
                .model
                .clone()
                .unwrap_or_else(|| crate::model_args::DEFAULT_MODEL.into()),
            device: self.device.clone(),
            dtype: self.dtype,
            adapter: None,
        }
        .load_as(weights)
    }
}
