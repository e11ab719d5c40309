//! The training loop, top to bottom: data → adapters → optimizer → for each step: micro-batches
//! forward/backward (loss summed over targets, divided by the step's target tokens), clip,
//! AdamW; evaluate, checkpoint, report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, Var};
use tuna_data::{
    epoch_plan, make_batch, Batch, Dataset, EncodeOptions, Encoder, Example, LineRecord, ShotPool,
};
use tuna_eval::generate::{generate, SamplingOptions};
use tuna_eval::loss::examples_nll;
use tuna_lora::{peft, LoraConfig};
use tuna_model::Pretrained;

use crate::chart::History;
use crate::checkpoint::{self, TrainerState};
use crate::collective::{check_same_start, Collective, Single};
use crate::config::{LoopSection, TrainConfig};
use crate::error::TrainError;
use crate::events::TrainEvent;
use crate::loss::loss_and_grads;
use crate::optim::{clip_grad_norm, AdamW, AdamWParams};
use crate::run_dir::RunDir;
use crate::schedule::Schedule;
use crate::task_metric::{EvalMetric, TaskMetric};

/// Tokens per forward batch when scoring the valid split.
const EVAL_BATCH_TOKENS: usize = 4096;

pub struct TrainOutcome {
    pub adapter_dir: PathBuf,
    pub state: TrainerState,
}

/// The micro-batches of all epochs, in order, from any position (resume). Under
/// data-parallel training every rank walks the same plan and takes its share of each
/// micro-batch's rows (`rank`, `rank + world`, ...), so the ranks together train exactly
/// the micro-batch one process would.
struct BatchStream<'a> {
    examples: &'a [Example],
    config: &'a TrainConfig,
    pad: u32,
    epoch: u64,
    index: usize,
    plan: Vec<Vec<Vec<usize>>>,
    rank: usize,
    world: usize,
}

impl<'a> BatchStream<'a> {
    fn new(
        examples: &'a [Example],
        config: &'a TrainConfig,
        pad: u32,
        epoch: u64,
        index: usize,
    ) -> Self {
        let plan = epoch_plan(examples, &config.batch, config.train.seed, epoch);
        Self {
            examples,
            config,
            pad,
            epoch,
            index,
            plan,
            rank: 0,
            world: 1,
        }
    }

    /// This rank's share of every micro-batch.
    fn sharded(self, rank: usize, world: usize) -> Self {
        Self {
            rank,
            world: world.max(1),
            ..self
        }
    }

    fn next_batch(&mut self) -> Batch {
        if self.index >= self.plan.len() {
            self.epoch += 1;
            self.index = 0;
            self.plan = epoch_plan(
                self.examples,
                &self.config.batch,
                self.config.train.seed,
                self.epoch,
            );
        }
        let rows: Vec<Vec<usize>> = self.plan[self.index]
            .iter()
            .skip(self.rank)
            .step_by(self.world)
            .cloned()
            .collect();
        let batch = make_batch(
            self.examples,
            &rows,
            self.pad,
            self.config.batch.pad_to_multiple_of,
        );
        self.index += 1;
        batch
    }
}

fn load_data(
    model: &Pretrained,
    config: &TrainConfig,
) -> Result<(Dataset, Option<Dataset>), TrainError> {
    let encoding = config.encoding_with_seed();
    // Which records train and which validate is settled without shots, so that shots are
    // then drawn from the train records alone (no held-out record as a shot).
    let plain = EncodeOptions {
        shots: 0,
        ..encoding.clone()
    };
    let (train, split_valid) = train_split(model, config, &plain)?;
    if encoding.shots == 0 {
        let valid = match split_valid {
            Some(v) => Some(v),
            None if !config.data.valid.as_os_str().is_empty() => Some(Dataset::load(
                &config.data.valid,
                &Encoder::new(model, &plain)?,
                &config.fields,
            )?),
            None => None,
        };
        return Ok((train, valid));
    }
    let encoder = Encoder::new(model, &encoding)?;
    let pool = ShotPool {
        records: &train.records_parsed,
        same_file: true,
    };
    let all = Dataset::load_with_shots(&config.data.train, &encoder, &config.fields, Some(pool))?;
    let mut train_shots = all.clone();
    train_shots.retain_lines(&train.lines());
    let valid = match split_valid {
        Some(v) => {
            let mut valid = all;
            valid.retain_lines(&v.lines());
            Some(valid)
        }
        None if !config.data.valid.as_os_str().is_empty() => Some(Dataset::load_with_shots(
            &config.data.valid,
            &encoder,
            &config.fields,
            Some(ShotPool {
                same_file: false,
                ..pool
            }),
        )?),
        None => None,
    };
    Ok((train_shots, valid))
}

/// The train file's records that train (after `train_subset` and any `valid_fraction`
/// split, which comes back too), encoded with `options`.
fn train_split(
    model: &Pretrained,
    config: &TrainConfig,
    options: &EncodeOptions,
) -> Result<(Dataset, Option<Dataset>), TrainError> {
    let encoder = Encoder::new(model, options)?;
    let train = Dataset::load(&config.data.train, &encoder, &config.fields)?;
    let subset = |d: Dataset| match config.data.train_subset {
        0 => d,
        n => d.subset(n, config.train.seed),
    };
    if config.data.valid.as_os_str().is_empty() && config.data.valid_fraction > 0.0 {
        let (train, valid) = train.split_fraction(config.data.valid_fraction);
        return Ok((subset(train), Some(valid)));
    }
    Ok((subset(train), None))
}

/// The records a run's training shots were drawn from (the train split, as `tuna train`
/// settled it): eval draws from them too, so its loss is the run's.
pub fn shot_pool(model: &Pretrained, config: &TrainConfig) -> Result<Vec<LineRecord>, TrainError> {
    let plain = EncodeOptions {
        shots: 0,
        ..config.encoding_with_seed()
    };
    Ok(train_split(model, config, &plain)?.0.records_parsed)
}

/// Adapters for this run: the checkpoint's when resuming, an existing adapter's with
/// `init_adapter`, else fresh ones. Returns the vars, their stable names, and the config
/// the adapter is saved with (a loaded adapter's own: its rank, alpha and modules are
/// what its tensors are).
fn attach_adapters(
    model: &mut Pretrained,
    config: &TrainConfig,
    resume_from: Option<&Path>,
) -> Result<(Vec<Var>, Vec<String>, LoraConfig), TrainError> {
    let source = resume_from
        .map(PathBuf::from)
        .or_else(|| (!config.init_adapter.is_empty()).then(|| PathBuf::from(&config.init_adapter)));
    let saved_as = match source {
        Some(dir) => {
            let loaded = peft::load(&dir)?;
            model.model.load_lora(&loaded)?;
            loaded.config
        }
        None => {
            let fresh = config.lora_config();
            model.model.attach_lora(&fresh, config.train.seed)?;
            fresh
        }
    };
    let mut vars = Vec::new();
    let mut names = Vec::new();
    for (module, a, b) in model.model.lora_vars() {
        names.push(format!("{module}.lora_A"));
        vars.push(a);
        names.push(format!("{module}.lora_B"));
        vars.push(b);
    }
    Ok((vars, names, saved_as))
}

/// The valid loss per target token; each rank scores its share of the examples and the
/// sums are reduced.
fn eval_loss(
    model: &mut Pretrained,
    valid: &Dataset,
    comm: &dyn Collective,
) -> Result<(f64, usize), TrainError> {
    model.model.set_training(false);
    let share: Vec<Example> = valid
        .examples
        .iter()
        .skip(comm.rank())
        .step_by(comm.world_size())
        .cloned()
        .collect();
    let (sum, n) = examples_nll(&model.model, &share, EVAL_BATCH_TOKENS)?;
    model.model.set_training(true);
    let mut totals = [sum, n as f64];
    comm.all_reduce_f64(&mut totals)?;
    let n = totals[1] as usize;
    Ok((totals[0] / n.max(1) as f64, n))
}

/// Whether `flag` is set on any rank.
fn on_any_rank(comm: &dyn Collective, flag: bool) -> Result<bool, TrainError> {
    let mut v = [flag as u8 as f64];
    comm.all_reduce_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// Greedy completions of the first `sample_count` held-out examples that have a prompt.
fn eval_samples(
    model: &mut Pretrained,
    valid: &Dataset,
    loop_config: &LoopSection,
    step: usize,
) -> Result<Vec<TrainEvent>, TrainError> {
    let options = SamplingOptions {
        max_new_tokens: loop_config.sample_max_new_tokens,
        ..Default::default()
    };
    let with_prompt = valid.examples.iter().filter_map(|x| {
        let first = x.trained.iter().position(|&t| t)?;
        (first > 0).then_some((x, first))
    });
    model.model.set_training(false);
    let mut samples = Vec::new();
    for (example, first) in with_prompt.take(loop_config.sample_count) {
        let (prompt, reference) = example.ids.split_at(first);
        let (output, _) = generate(model, prompt, &options, |_| {})?;
        let text = |ids: &[u32]| model.tokenizer.decode(ids, true);
        samples.push(TrainEvent::Sample {
            step,
            line: example.line,
            prompt: text(prompt)?,
            output: text(&output)?,
            reference: text(reference)?,
        });
    }
    model.model.set_training(true);
    Ok(samples)
}

/// One optimizer step's gradients: each micro-batch's summed NLL divided by the target tokens
/// of the whole step, backpropagated and added up. `seed` draws dropout masks (one stream per
/// micro-batch), so a resumed run repeats them. Returns (gradients aligned with `vars`, mean
/// loss per target token, target tokens).
pub fn accumulate_gradients(
    model: &Pretrained,
    vars: &[Var],
    micro: &[Batch],
    seed: u64,
) -> Result<(Vec<Tensor>, f64, usize), TrainError> {
    let pass = accumulate(model, vars, micro, seed, &Single)?;
    Ok((pass.grads, pass.loss, pass.target_tokens))
}

/// The gradients summed over every rank: one all-reduce of one flat f32 buffer, the
/// tensors in the order of `vars` (the adapter's names, sorted, on every rank).
fn all_reduce_grads(grads: &[Tensor], comm: &dyn Collective) -> Result<Vec<Tensor>, TrainError> {
    let mut flat: Vec<f32> = Vec::with_capacity(grads.iter().map(|g| g.elem_count()).sum());
    for g in grads {
        flat.extend(
            g.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    comm.all_reduce_f32(&mut flat)?;
    let mut at = 0;
    grads
        .iter()
        .map(|g| {
            let n = g.elem_count();
            let t =
                Tensor::from_slice(&flat[at..at + n], g.shape(), g.device())?.to_dtype(g.dtype());
            at += n;
            Ok(t?)
        })
        .collect()
}

struct Accumulated {
    grads: Vec<Tensor>,
    /// Input tokens of the step (every rank's).
    tokens: usize,
    loss: f64,
    target_tokens: usize,
    forward_s: f64,
    backward_s: f64,
}

/// Under data-parallel training `micro` is this rank's share of each micro-batch: the
/// step's target tokens are counted over every rank first (so each share's loss is scaled
/// as one process would scale it), and the gradients and loss summed over the ranks after.
fn accumulate(
    model: &Pretrained,
    vars: &[Var],
    micro: &[Batch],
    seed: u64,
    comm: &dyn Collective,
) -> Result<Accumulated, TrainError> {
    let local_targets: usize = micro.iter().map(|b| b.n_targets).sum();
    let step_targets = match comm.world_size() {
        1 => local_targets,
        _ => {
            let mut count = [local_targets as f64];
            comm.all_reduce_f64(&mut count)?;
            count[0] as usize
        }
    }
    .max(1);
    let mut grads: Vec<Tensor> = vars
        .iter()
        .map(|v| v.zeros_like())
        .collect::<candle_core::Result<_>>()?;
    let (mut loss_sum, mut forward_s, mut backward_s) = (0f64, 0f64, 0f64);
    for (i, batch) in micro.iter().enumerate().filter(|(_, b)| b.n_targets > 0) {
        let micro_seed = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(i as u64);
        let pass = loss_and_grads(&model.model, batch, 1.0 / step_targets as f64, micro_seed)?;
        loss_sum += pass.loss;
        forward_s += pass.forward_s;
        backward_s += pass.backward_s;
        let started = Instant::now();
        for (g, v) in grads.iter_mut().zip(vars) {
            if let Some(dg) = pass.grads.get(v.as_tensor()) {
                *g = (&*g + dg)?;
            }
        }
        backward_s += started.elapsed().as_secs_f64();
    }
    let mut tokens: usize = micro.iter().map(|b| b.n_tokens).sum();
    if comm.world_size() > 1 {
        let started = Instant::now();
        grads = all_reduce_grads(&grads, comm)?;
        let mut totals = [loss_sum, tokens as f64];
        comm.all_reduce_f64(&mut totals)?;
        (loss_sum, tokens) = (totals[0], totals[1] as usize);
        backward_s += started.elapsed().as_secs_f64();
    }
    Ok(Accumulated {
        grads,
        tokens,
        loss: loss_sum / step_targets as f64,
        target_tokens: step_targets,
        forward_s,
        backward_s,
    })
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean loss per target token over the step's micro-batches.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub target_tokens: usize,
    pub tokens: usize,
    /// Seconds in the forward passes, the backward passes and the update.
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
}

/// One optimizer step, as the loop and `tuna bench train` run it: the gradients of the
/// step's micro-batches accumulated over its target tokens, the global norm clipped to
/// `max_grad_norm` (0: off), then the AdamW update at `lr`. A non-finite loss skips the update
/// and is returned for the caller to stop on.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    model: &Pretrained,
    vars: &[Var],
    optimizer: &mut AdamW,
    micro: &[Batch],
    seed: u64,
    max_grad_norm: f64,
    lr: f64,
    comm: &dyn Collective,
) -> Result<StepOutcome, TrainError> {
    let pass = accumulate(model, vars, micro, seed, comm)?;
    let tokens = pass.tokens;
    let mut outcome = StepOutcome {
        loss: pass.loss,
        grad_norm: f64::NAN,
        target_tokens: pass.target_tokens,
        tokens,
        forward_s: pass.forward_s,
        backward_s: pass.backward_s,
        optimizer_s: 0.0,
    };
    if !pass.loss.is_finite() {
        return Ok(outcome);
    }
    let started = Instant::now();
    let mut grads = pass.grads;
    let max_norm = (max_grad_norm > 0.0).then_some(max_grad_norm);
    outcome.grad_norm = clip_grad_norm(&mut grads, max_norm)?;
    optimizer.update(&grads, lr)?;
    model.model.device().synchronize()?;
    outcome.optimizer_s = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The learning-rate schedule of a run of `total_steps` steps under `config`.
pub fn schedule_for(config: &TrainConfig, total_steps: usize) -> Schedule {
    let o = &config.optim;
    let warmup = if o.warmup_steps > 0 {
        o.warmup_steps
    } else {
        (o.warmup_ratio * total_steps as f64).round() as usize
    };
    Schedule {
        kind: o.schedule,
        peak: o.lr,
        warmup_steps: warmup,
        total_steps,
    }
}

/// Every event goes to the run's metrics.jsonl, then to the caller's observer.
fn emit(
    run: &mut RunDir,
    report: &mut dyn FnMut(&TrainEvent),
    event: TrainEvent,
) -> Result<(), TrainError> {
    run.record(&event)?;
    report(&event);
    Ok(())
}

/// Trains `model` as `config` says; `resume` continues the run in `config.output` exactly.
/// Setting `interrupt` (Ctrl-C) ends the run after the current step with a resumable
/// checkpoint and `TrainError::Interrupted`.
pub fn train(
    model: &mut Pretrained,
    config: &TrainConfig,
    resume: bool,
    interrupt: &AtomicBool,
    report: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    train_on(model, config, resume, interrupt, &Single, report)
}

/// What every rank of a data-parallel run must agree on before its first step: the
/// settings (paths left out: machines may mount the same files elsewhere), the encoded
/// examples, the adapter weights (fresh or resumed) and the position in the data.
fn start_fingerprint(
    config: &TrainConfig,
    train: &Dataset,
    valid: Option<&Dataset>,
    vars: &[Var],
    state: &TrainerState,
) -> Result<u64, TrainError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut settings = config.clone();
    settings.model.clear();
    settings.output = PathBuf::new();
    settings.init_adapter.clear();
    settings.data.train = PathBuf::new();
    settings.data.valid = PathBuf::new();
    serde_json::to_string(&settings)
        .unwrap_or_default()
        .hash(&mut h);
    for data in std::iter::once(train).chain(valid) {
        data.examples.len().hash(&mut h);
        for e in &data.examples {
            (&e.ids, &e.trained).hash(&mut h);
        }
    }
    for var in vars {
        let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        values.iter().for_each(|v| v.to_bits().hash(&mut h));
    }
    (
        state.step,
        state.epoch,
        state.batch_in_epoch,
        state.total_steps,
    )
        .hash(&mut h);
    Ok(h.finish())
}

/// `train` as one rank of `comm`: every rank holds the whole model and the same LoRA
/// weights, trains its share of each micro-batch, and applies the same reduced step; rank 0
/// writes the run directory. One process (`Single`) is the plain run.
pub fn train_on(
    model: &mut Pretrained,
    config: &TrainConfig,
    resume: bool,
    interrupt: &AtomicBool,
    comm: &dyn Collective,
    report: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    config.validate()?;
    let mut run = RunDir::open(&config.output, resume, comm.writes())?;
    let outcome = train_in(model, config, resume, interrupt, comm, &mut run, report);
    if outcome.is_err() {
        // A run that failed before recording anything leaves no directory it created.
        run.discard_if_nothing_recorded();
    }
    outcome
}

fn train_in(
    model: &mut Pretrained,
    config: &TrainConfig,
    resume: bool,
    interrupt: &AtomicBool,
    comm: &dyn Collective,
    run: &mut RunDir,
    report: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    let run_dir = run.path().to_path_buf();
    let latest = run.latest_checkpoint();
    run.write_config(config)?;

    // Data.
    let (train_data, valid_data) = load_data(model, config)?;
    let split_off = config.data.valid.as_os_str().is_empty() && config.data.valid_fraction > 0.0;
    let empty = |data: &Dataset, split: &str| {
        TrainError::NoTrainingData {
        split: format!("{split} {}", data.path.display()),
        detail: match (split_off, data.skipped_untrainable) {
            (true, _) => format!(
                " (valid_fraction {} holds out {} of the file's examples for validation and leaves {} for training)",
                config.data.valid_fraction,
                valid_data.as_ref().map_or(0, |v| v.examples.len()),
                train_data.examples.len()
            ),
            (false, 0) => String::new(),
            (false, n) => format!(" ({n} lost every target token to truncation at max_seq_len {})", config.encoding.max_seq_len),
        },
    }
    };
    if train_data.trained_tokens() == 0 {
        return Err(empty(&train_data, "train"));
    }
    if let Some(valid) = valid_data.as_ref().filter(|v| v.trained_tokens() == 0) {
        // An eval loss over nothing would read 0 and win every "best" comparison.
        return Err(empty(valid, "valid"));
    }
    let judge = config.eval_metric();
    // `validate` has made sure a task metric has a valid split to score.
    let task_metric = match (judge, valid_data.as_ref()) {
        (EvalMetric::Task(metric), Some(valid)) => {
            Some(TaskMetric::prepare(metric, config, valid)?)
        }
        _ => None,
    };
    let pad = model
        .tokenizer
        .special
        .pad
        .as_ref()
        .or(model.tokenizer.special.eos.as_ref())
        .map_or(0, |(id, _)| *id);

    // Adapters and optimizer, from the latest checkpoint when resuming.
    let resume_from = if resume {
        latest.as_ref().map(|(_, p)| p.as_path())
    } else {
        None
    };
    let (vars, names, lora_config) = attach_adapters(model, config, resume_from)?;
    model.model.set_training(true);
    let o = &config.optim;
    let mut optimizer = AdamW::new(
        vars.clone(),
        AdamWParams {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        },
    )?;

    let micro_per_epoch =
        epoch_plan(&train_data.examples, &config.batch, config.train.seed, 0).len();
    let steps_per_epoch = micro_per_epoch.div_ceil(config.train.grad_accum).max(1);
    let total_steps = match config.train.max_steps {
        0 => ((config.train.epochs * steps_per_epoch as f64).ceil() as usize).max(1),
        n => n,
    };
    let schedule = schedule_for(config, total_steps);

    let mut state = TrainerState {
        step: 0,
        total_steps,
        epoch: 0,
        batch_in_epoch: 0,
        best_eval_loss: None,
        best_eval_metric: None,
        best_step: None,
        evals_since_best: 0,
        tokens_seen: 0,
        train_seconds: 0.0,
        cpu_seconds: 0.0,
        train_examples: None,
        history: History::default(),
    };
    if let Some(dir) = resume_from {
        let (saved, moments) = checkpoint::read(dir)?;
        optimizer
            .load_state(&names, &moments, saved.step)
            .map_err(|reason| TrainError::BadCheckpoint {
                path: dir.join(checkpoint::OPTIMIZER_FILE),
                reason,
            })?;
        state = TrainerState {
            total_steps,
            ..saved
        };
    }
    state.train_examples = Some(train_data.examples.len());
    if comm.world_size() > 1 {
        let fingerprint =
            start_fingerprint(config, &train_data, valid_data.as_ref(), &vars, &state)?;
        check_same_start(comm, fingerprint)?;
    }
    let mut stream = BatchStream::new(
        &train_data.examples,
        config,
        pad,
        state.epoch,
        state.batch_in_epoch,
    )
    .sharded(comm.rank(), comm.world_size());
    emit(
        run,
        report,
        TrainEvent::Started {
            total_steps,
            start_step: state.step,
            train_examples: train_data.examples.len(),
            valid_examples: valid_data.as_ref().map_or(0, |v| v.examples.len()),
            train_target_tokens: train_data.trained_tokens(),
            trainable_params: vars.iter().map(|v| v.elem_count()).sum(),
            world_size: comm.world_size(),
            skipped_untrainable: (
                train_data.skipped_untrainable,
                valid_data.as_ref().map_or(0, |v| v.skipped_untrainable),
            ),
            truncated: train_data.truncated,
        },
    )?;

    let save = |model: &mut Pretrained,
                optimizer: &AdamW,
                state: &TrainerState|
     -> Result<PathBuf, TrainError> {
        checkpoint::write(
            &run_dir,
            |dir| Ok(model.model.save_lora(dir, &lora_config)?),
            &optimizer.state(&names),
            state,
        )
    };
    let started = Instant::now();
    let seconds_before = state.train_seconds;
    let cpu_before = state.cpu_seconds;
    let cpu = tuna_model::cpu_time::CpuTimer::start();
    let mut stopped_early = false;
    while state.step < total_steps {
        let step_started = Instant::now();
        let micro: Vec<Batch> = (0..config.train.grad_accum)
            .map(|_| stream.next_batch())
            .collect();
        let lr = schedule.lr(state.step + 1);
        let done = optimizer_step(
            model,
            &vars,
            &mut optimizer,
            &micro,
            config.train.seed ^ (state.step as u64 + 1),
            o.max_grad_norm,
            lr,
            comm,
        )?;
        let StepOutcome {
            loss,
            grad_norm,
            tokens,
            ..
        } = done;
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: state.step + 1,
                value: loss,
                last_checkpoint: checkpoint::list(&run_dir).pop().map(|(_, p)| p),
            });
        }

        state.step += 1;
        state.epoch = stream.epoch;
        state.batch_in_epoch = stream.index;
        state.tokens_seen += tokens;
        state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
        state.cpu_seconds = cpu_before + cpu.seconds();
        let event = TrainEvent::Step {
            step: state.step,
            total_steps,
            loss,
            lr,
            grad_norm,
            target_tokens: done.target_tokens,
            tokens,
            tokens_per_s: tokens as f64 / step_started.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: state.train_seconds,
        };
        state.history.observe(&event);
        emit(run, report, event)?;

        let last = state.step == total_steps;
        let every = |n: usize| n > 0 && state.step.is_multiple_of(n);
        let mut improved = false;
        if let Some(valid) = valid_data
            .as_ref()
            .filter(|_| every(config.train.eval_every) || last)
        {
            let (eval, n) = eval_loss(model, valid, comm)?;
            // The task metric is scored on rank 0 and shared, so every rank judges alike.
            let metric_value = match &task_metric {
                Some(t) => {
                    let mut value = [0.0];
                    if comm.rank() == 0 {
                        model.model.set_training(false);
                        let scored = t.score(model);
                        model.model.set_training(true);
                        value[0] = scored?;
                    }
                    comm.all_reduce_f64(&mut value)?;
                    Some(value[0])
                }
                None => None,
            };
            improved = match (judge, metric_value) {
                (EvalMetric::Task(_), Some(v)) => {
                    state.best_eval_metric.is_none_or(|b| judge.better(v, b))
                }
                _ => state.best_eval_loss.is_none_or(|b| eval < b),
            };
            if improved {
                state.best_eval_loss = Some(eval);
                state.best_eval_metric = metric_value;
                state.best_step = Some(state.step);
                state.evals_since_best = 0;
            } else {
                state.evals_since_best += 1;
            }
            let event = TrainEvent::Eval {
                step: state.step,
                loss: eval,
                perplexity: eval.exp(),
                tokens: n,
                metric: task_metric.as_ref().map(|t| t.metric.name()),
                metric_value,
                best: improved,
            };
            state.history.observe(&event);
            emit(run, report, event)?;
            if comm.writes() {
                for sample in eval_samples(model, valid, &config.train, state.step)? {
                    emit(run, report, sample)?;
                }
            }
            run.draw_chart(&state.history, total_steps)?;
            let patience = config.train.early_stopping_patience;
            stopped_early = patience > 0 && state.evals_since_best >= patience && !last;
        }
        // Ctrl-C reaches the ranks at different moments: they stop at the same step.
        let interrupted = on_any_rank(comm, interrupt.load(Ordering::SeqCst))?;
        let save_now =
            every(config.train.save_every) || last || improved || stopped_early || interrupted;
        if save_now && comm.writes() {
            let dir = save(model, &optimizer, &state)?;
            if improved {
                checkpoint::publish_adapter(&dir, &run.best_dir())?;
            }
            checkpoint::prune(&run_dir, config.train.keep_last)?;
            emit(
                run,
                report,
                TrainEvent::Checkpoint {
                    step: state.step,
                    path: dir.display().to_string(),
                },
            )?;
        }
        if interrupted {
            return Err(TrainError::Interrupted {
                step: state.step,
                run: run_dir.clone(),
            });
        }
        if stopped_early {
            break;
        }
    }

    let adapter_dir = run.adapter_dir();
    let newest = run.latest_checkpoint().map(|(_, p)| p);
    match newest {
        _ if !comm.writes() => {}
        Some(dir) => checkpoint::publish_adapter(&dir, &adapter_dir)?,
        None => model.model.save_lora(&adapter_dir, &lora_config)?,
    }
    if valid_data.is_none() {
        // Without evaluations the chart was never drawn.
        run.draw_chart(&state.history, total_steps)?;
    }
    emit(
        run,
        report,
        TrainEvent::Finished {
            step: state.step,
            adapter: adapter_dir.display().to_string(),
            best_eval_loss: state.best_eval_loss,
            best_eval_metric: state.best_eval_metric,
            eval_metric: config.train.eval_metric.clone(),
            best_step: state.best_step,
            train_seconds: state.train_seconds,
            cpu_seconds: state.cpu_seconds,
            stopped_early,
        },
    )?;
    Ok(TrainOutcome { adapter_dir, state })
}
