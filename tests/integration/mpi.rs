//! Data-parallel training over MPI (the `mpi` build; scripts/test.sh runs these where an
//! MPI library is installed): two ranks train the same adapter, with the same per-step
//! losses, as one process running the same command — with gradient accumulation, an odd
//! batch size and completions of different lengths, so the ranks hold uneven target-token
//! counts; killing one rank ends the job naming it and leaves the last checkpoint, from
//! which a 2-rank resume continues exactly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tuna_testkit::{tiny_model, TinySpec};

use crate::util::{tuna, Run};

/// What OpenMPI needs to run in a container as root, without ptrace for shared memory.
const MPI_ENV: [(&str, &str); 3] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
];

fn mpirun_command(n: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_tuna"))
        .args(args)
        .env_remove("TUNA_MODEL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in MPI_ENV {
        cmd.env(k, v);
    }
    cmd
}

fn mpirun(n: usize, args: &[&str]) -> Run {
    let out = mpirun_command(n, args).output().expect("run mpirun");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A label task whose answers differ in length (1 to 4 words), so rows carry different
/// target-token counts.
fn write_task(dir: &Path) -> (PathBuf, PathBuf) {
    let answers = ["yes", "no way", "it is so", "not at all now"];
    let line = |i: usize| {
        format!(
            "{{\"prompt\": \"case {i} of {}\", \"completion\": \"{}\"}}\n",
            i % 7,
            answers[i % answers.len()]
        )
    };
    let (train, valid) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    std::fs::write(&train, (0..30).map(line).collect::<String>()).unwrap();
    std::fs::write(&valid, (100..109).map(line).collect::<String>()).unwrap();
    std::fs::write(
        dir.join("constant.toml"),
        "[optim]\nschedule = \"constant\"\nwarmup_steps = 0\nwarmup_ratio = 0.0\n",
    )
    .unwrap();
    (train, valid)
}

/// The training flags both sides run with (a constant schedule, so a resumed run with more
/// steps takes the same steps as one that was asked for them from the start).
fn flags<'a>(model: &'a str, train: &'a Path, valid: &'a Path, out: &'a Path) -> Vec<String> {
    let constant = train.with_file_name("constant.toml");
    [
        "train",
        "-c",
        constant.to_str().unwrap(),
        "--model",
        model,
        "--data",
        train.to_str().unwrap(),
        "--valid",
        valid.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--batch-size",
        "3",
        "--grad-accum",
        "2",
        "--lora-r",
        "4",
        "--lr",
        "5e-3",
        "--eval-every",
        "2",
        "--seed",
        "3",
    ]
    .map(String::from)
    .to_vec()
}

fn events(run: &Path, event: &str, field: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == event)
        .map(|v| v[field].as_f64().unwrap())
        .collect()
}

fn step_losses(run: &Path, event: &str) -> Vec<f64> {
    events(run, event, "loss")
}

fn adapter_weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let tensors = candle_core::safetensors::load(
        dir.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn assert_same_adapter(a: &Path, b: &Path, tol: f32) {
    let (wa, wb) = (adapter_weights(a), adapter_weights(b));
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let worst = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "{na}: weights differ by {worst}");
    }
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what} {i}: {x} vs {y}");
    }
}

#[test]
fn two_ranks_train_the_adapter_one_process_trains() {
    let m = tiny_model(TinySpec::default());
    let (train, valid) = write_task(m.path());
    let model = m.path_str();
    let (one, two) = (m.path().join("one"), m.path().join("two"));
    let mut args = flags(&model, &train, &valid, &one);
    args.extend(["--max-steps", "6", "--quiet"].map(String::from));
    let r = tuna(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The same command with --nproc 2: mpirun starts two ranks of it.
    let mut args = flags(&model, &train, &valid, &two);
    args.extend(["--max-steps", "6", "--nproc", "2"].map(String::from));
    let r = tuna(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &MPI_ENV,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("data-parallel over 2 ranks"),
        "{}",
        r.stderr
    );
    // Rank 0 alone speaks: one start line, one adapter path.
    assert_eq!(r.stderr.matches("training: ").count(), 1, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);

    assert_close(
        &step_losses(&one, "step"),
        &step_losses(&two, "step"),
        1e-5,
        "step loss",
    );
    assert_close(
        &step_losses(&one, "eval"),
        &step_losses(&two, "eval"),
        1e-5,
        "eval loss",
    );
    assert_eq!(step_losses(&two, "step").len(), 6);
    // Each rank trained its share only: the job's token counts are one process's.
    for field in ["tokens", "target_tokens"] {
        assert_eq!(
            events(&one, "step", field),
            events(&two, "step", field),
            "{field}"
        );
    }
    assert_eq!(
        events(&one, "eval", "tokens"),
        events(&two, "eval", "tokens")
    );
    assert_same_adapter(&one.join("adapter"), &two.join("adapter"), 1e-5);
}

/// The pid of the rank `rank` that `mpirun` (pid `parent`) started, once it runs.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
        if environ.split(|&b| b == 0).any(|kv| kv == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_two_ranks_resume_exactly() {
    let m = tiny_model(TinySpec::default());
    let (train, valid) = write_task(m.path());
    let model = m.path_str();
    let (killed, whole) = (m.path().join("killed"), m.path().join("whole"));
    let mut args = flags(&model, &train, &valid, &killed);
    args.extend(["--max-steps", "100000", "--save-every", "1", "--quiet"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let job = mpirun_command(2, &argv).spawn().expect("start mpirun");
    let started = Instant::now();
    while tuna_train::checkpoint::list(&killed)
        .last()
        .is_none_or(|(step, _)| *step < 3)
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = rank_pid(job.id(), 1).expect("rank 1 of the job");
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rank 1") && stderr.contains("signal 9"),
        "mpirun names the rank: {stderr}"
    );

    // The last checkpoint is whole: two ranks resume from it, and end where an unbroken
    // 2-rank run of as many steps ends.
    let (last, dir) = tuna_train::checkpoint::list(&killed).pop().unwrap();
    tuna_train::checkpoint::read(&dir).expect("the last checkpoint loads");
    let steps = (last + 3).to_string();
    let resumed = mpirun(
        2,
        &[
            "train",
            "--model",
            &model,
            "--resume",
            killed.to_str().unwrap(),
            "--max-steps",
            &steps,
            "--quiet",
        ],
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let mut args = flags(&model, &train, &valid, &whole);
    args.extend(["--max-steps", &steps, "--save-every", "1", "--quiet"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = mpirun(2, &argv);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (a, b) = (step_losses(&killed, "step"), step_losses(&whole, "step"));
    // The killed run logged steps past its last checkpoint; the resumed part is the tail.
    assert_eq!(&a[a.len() - 3..], &b[b.len() - 3..], "resumed losses");
    assert_same_adapter(&killed.join("adapter"), &whole.join("adapter"), 0.0);
}

#[test]
fn ranks_that_start_from_different_data_refuse_to_train() {
    let m = tiny_model(TinySpec::default());
    let (train, valid) = write_task(m.path());
    // A stale copy on "another machine": the same rows but one answer changed.
    let stale = m.path().join("stale.jsonl");
    let text = std::fs::read_to_string(&train).unwrap();
    std::fs::write(&stale, text.replacen("\"yes\"", "\"yes indeed\"", 1)).unwrap();
    let out = m.path().join("run");
    let mut args = flags(&m.path_str(), &train, &valid, &out);
    args.extend(["--max-steps", "3", "--quiet"].map(String::from));
    // Rank 1 reads the stale file: the shell picks the path from the rank mpirun gives it.
    let at = args.iter().position(|a| a == "--data").unwrap() + 1;
    args[at] = "\"$DATA\"".into();
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then DATA={}; else DATA={}; fi; exec {} {}",
        stale.display(),
        train.display(),
        env!("CARGO_BIN_EXE_tuna"),
        args.join(" ")
    );
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", "2", "sh", "-c", &script])
        .env_remove("TUNA_MODEL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in MPI_ENV {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let r = cmd.output().expect("run mpirun");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{stderr}");
    assert!(
        stderr.contains("do not start from the same state"),
        "the error says why: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60), "no hang");
    assert!(
        tuna_train::checkpoint::list(&out).is_empty(),
        "no step was taken"
    );
}
