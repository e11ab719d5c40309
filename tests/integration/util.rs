//! Running the tuna binary and normalizing its output for whole-output comparisons.

use std::path::Path;
use std::process::{Command, Output};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tuna args...` with `envs`, stdin closed, no TUNA_MODEL from the caller's shell.
pub fn tuna(args: &[&str], envs: &[(&str, &str)]) -> Run {
    tuna_in(Path::new("."), args, envs)
}

/// The same, in the working directory `dir`.
pub fn tuna_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    run_tuna(dir, args, envs, None)
}

/// `tuna args...` with `input` on its stdin (a pipe, not a terminal).
pub fn tuna_with_input(args: &[&str], input: &str) -> Run {
    run_tuna(Path::new("."), args, &[], Some(input))
}

fn run_tuna(dir: &Path, args: &[&str], envs: &[(&str, &str)], input: Option<&str>) -> Run {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuna"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("TUNA_MODEL")
        .env("NO_COLOR", "1")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run tuna");
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .expect("write tuna's stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("run tuna");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// prompt/completion lines of a parity task: "is 3 even" -> "no".
pub fn write_parity(path: &Path, range: std::ops::Range<usize>) {
    let text: String = range
        .map(|i| {
            let answer = if i % 2 == 0 { "yes" } else { "no" };
            format!("{{\"prompt\": \"is {i} even\", \"completion\": \"{answer}\"}}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Replaces `dir` in `text` with `<TMP>`.
pub fn redact(text: &str, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "<TMP>")
}

/// SmolLM2's 16 greedy tokens (EOS ignored) for one fixed chat prompt: the tokens two loads
/// of a model must agree on.
pub fn greedy_animal(p: &tuna_model::Pretrained) -> Vec<u32> {
    let prompt = p
        .tokenizer
        .encode(
            "<|im_start|>user\nName a large animal.<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let options = tuna_eval::SamplingOptions {
        max_new_tokens: 16,
        ignore_eos: true,
        ..Default::default()
    };
    tuna_eval::generate(p, &prompt, &options, |_| {}).unwrap().0
}
