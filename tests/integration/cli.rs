//! Bad input through the binary: each gives a one-line error naming the path or field, a
//! hint, a non-zero exit code, and no panic. Whole stderr compared.

use std::path::Path;

use tuna_testkit::{smollm2_gguf, tiny_model, write_json, TinySpec};

use crate::util::{redact, tuna};

fn check(args: &[&str], tmp: &Path, want_code: i32, want_stderr: &str) {
    let run = tuna(args, &[]);
    assert_eq!(redact(&run.stderr, tmp), want_stderr, "tuna {args:?}");
    assert_eq!(run.code, want_code, "tuna {args:?}");
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn a_missing_model_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.gguf");
    check(
        &["generate", "--model", missing.to_str().unwrap(), "--prompt", "hi"],
        tmp.path(),
        1,
        "error: model not found: <TMP>/nope.gguf (<TMP>/ is empty)\n\
         hint: --model takes a .gguf file, a Hugging Face model directory (config.json + *.safetensors) or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct; scripts/fetch-model.sh fetches the default model into models/\n",
    );
}

#[test]
fn an_unknown_dtype_names_the_flag_and_the_choices() {
    let tmp = tempfile::tempdir().unwrap();
    check(
        &["generate", "--dtype", "f64", "--prompt", "hi"],
        tmp.path(),
        2,
        "error: invalid value 'f64' for '--dtype <DTYPE>'\n  \
         [possible values: f32, bf16, f16]\n\n\
         For more information, try '--help'.\n",
    );
}

#[test]
fn a_missing_data_file_or_a_directory_names_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nosuch.jsonl");
    check(
        &["eval", "--data", missing.to_str().unwrap()],
        tmp.path(),
        2,
        "error: invalid value '<TMP>/nosuch.jsonl' for '--data <DATA>': no such file\n\n\
         For more information, try '--help'.\n",
    );
    std::fs::write(tmp.path().join("valid.jsonl"), "{}\n").unwrap();
    check(
        &["train", "--data", tmp.path().to_str().unwrap()],
        tmp.path(),
        2,
        "error: invalid value '<TMP>' for '--data <DATA>': is a directory; pass a file, e.g. \
         <TMP>/valid.jsonl\n\n\
         For more information, try '--help'.\n",
    );
}

#[test]
fn a_tuned_strategy_without_an_adapter_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    check(
        &[
            "eval",
            "--data",
            "data/example/sentiment/valid.jsonl",
            "--strategies",
            "zero,tuned",
        ],
        tmp.path(),
        1,
        "error: --strategies zero,tuned: `tuned` scores the fine-tuned model, and no --adapter was \
         given; pass --adapter RUN (a run directory of tuna train) or leave `tuned` out\n",
    );
}

#[test]
fn a_truncated_gguf_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(smollm2_gguf()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let run = tuna(
        &[
            "generate",
            "--model",
            cut.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &[],
    );
    assert_eq!(run.code, 1);
    let stderr = redact(&run.stderr, tmp.path());
    let mut lines = stderr.lines();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with("error: <TMP>/cut.gguf: invalid GGUF file: truncated: tensor `")
            && first.ends_with(&format!("but the file has {} bytes", bytes.len() / 2)),
        "{first}"
    );
    assert_eq!(
        lines.next(),
        Some("hint: the file may be truncated or corrupt: download it again (scripts/fetch-model.sh checks the sha256 of the default model)")
    );
    assert_eq!(lines.next(), None);
}

#[test]
fn a_file_that_is_not_gguf_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake.gguf");
    std::fs::write(&fake, "not a model").unwrap();
    check(
        &["generate", "--model", fake.to_str().unwrap(), "--prompt", "hi"],
        tmp.path(),
        1,
        "error: <TMP>/fake.gguf: not a model file or directory: the file does not start with the GGUF magic bytes\n\
         hint: a model directory needs config.json and model.safetensors (or model.safetensors.index.json with its shards); a file must end in .gguf\n",
    );
}

#[test]
fn an_unsupported_architecture_names_it() {
    let m = tiny_model(TinySpec::default());
    let config = m.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["model_type"] = "gpt_neox".into();
    write_json(&config, &json);
    check(
        &["generate", "--model", &m.path_str(), "--prompt", "hi"],
        m.path(),
        1,
        "error: <TMP>/config.json: architecture `gpt_neox` is not supported (supported: llama, mistral, qwen2)\n\
         hint: tuna trains Llama-family decoders: Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2/2.5\n",
    );
}

#[test]
fn a_bad_config_field_is_named() {
    let m = tiny_model(TinySpec::default());
    let config = m.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["num_key_value_heads"] = 3.into();
    write_json(&config, &json);
    check(
        &["generate", "--model", &m.path_str(), "--prompt", "hi"],
        m.path(),
        1,
        "error: <TMP>/config.json: field `num_key_value_heads`: 3 does not divide num_attention_heads 4\n\
         hint: the model's config (config.json or GGUF metadata) is inconsistent: fix that field or download the model again\n",
    );
}

#[test]
fn a_missing_tokenizer_is_named() {
    let m = tiny_model(TinySpec::default());
    std::fs::remove_file(m.path().join("tokenizer.json")).unwrap();
    check(
        &["generate", "--model", &m.path_str(), "--prompt", "hi"],
        m.path(),
        1,
        "error: <TMP>/tokenizer.json: missing tokenizer (tokenizer.json)\n\
         hint: copy the missing file from the model's Hugging Face repository\n",
    );
}

#[test]
fn a_truncated_safetensors_file_is_named() {
    let m = tiny_model(TinySpec::default());
    let weights = m.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let run = tuna(
        &["generate", "--model", &m.path_str(), "--prompt", "hi"],
        &[],
    );
    let stderr = redact(&run.stderr, m.path());
    assert_eq!(run.code, 1);
    assert!(
        stderr.starts_with("error: <TMP>/model.safetensors: invalid safetensors file: "),
        "{stderr}"
    );
    assert!(stderr.ends_with("hint: the file may be truncated or corrupt: download it again (scripts/fetch-model.sh checks the sha256 of the default model)\n"));
}

#[test]
fn an_empty_prompt_is_refused() {
    let m = tiny_model(TinySpec::default());
    check(
        &["generate", "--model", &m.path_str(), "--prompt", "  "],
        m.path(),
        1,
        "error: the prompt is empty\nhint: pass --prompt TEXT, --prompt-file FILE, or text on stdin\n",
    );
}

#[test]
fn out_of_range_flags_are_named() {
    let m = tiny_model(TinySpec::default());
    let model = m.path_str();
    for (flag, value, want) in [
        (
            "--temperature",
            "-1",
            "error: --temperature: must be a finite number >= 0\nhint: run the command with --help for the accepted values\n",
        ),
        ("--top-p", "1.5", "error: --top-p: must be in (0, 1]\nhint: run the command with --help for the accepted values\n"),
        ("--top-k", "0", "error: --top-k: must be at least 1\nhint: run the command with --help for the accepted values\n"),
        (
            "--max-new-tokens",
            "0",
            "error: --max-new-tokens: must be at least 1\nhint: run the command with --help for the accepted values\n",
        ),
        (
            "--repetition-penalty",
            "0",
            "error: --repetition-penalty: must be a finite number > 0\nhint: run the command with --help for the accepted values\n",
        ),
    ] {
        check(
            &["generate", "--model", &model, "--prompt", "hi", flag, value],
            m.path(),
            1,
            want,
        );
    }
    check(
        &[
            "generate", "--model", &model, "--prompt", "hi", "--device", "tpu",
        ],
        m.path(),
        1,
        "error: device `tpu`: expected cpu, cuda, cuda:N, metal or auto\n\
         hint: build with --features cuda (or metal) for a GPU, or pass --device cpu\n",
    );
}

#[test]
fn chat_without_a_template_is_refused() {
    let m = tiny_model(TinySpec::default());
    let tc = m.path().join("tokenizer_config.json");
    write_json(
        &tc,
        &serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}),
    );
    check(
        &[
            "generate",
            "--model",
            &m.path_str(),
            "--prompt",
            "hi",
            "--chat",
        ],
        m.path(),
        1,
        "error: <TMP>: the model has no chat template\n\
         hint: drop --chat to feed the prompt as raw text, or use an instruct model\n",
    );
}

#[test]
fn eval_reports_every_bad_line() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"ok\"}\n{\"text\": 5}\n{\"prompt\": \"x\"}\nnot json\n",
    )
    .unwrap();
    check(
        &[
            "eval",
            "--model",
            &m.path_str(),
            "--data",
            data.to_str().unwrap(),
        ],
        m.path(),
        1,
        "error: <TMP>/bad.jsonl:2: text: expected a string, found a number\n\
         <TMP>/bad.jsonl:3: completion: missing\n\
         <TMP>/bad.jsonl:4: (line): invalid JSON: expected ident at line 1 column 2\n\
         hint: each line must be one JSON object, e.g. {\"text\": \"...\"}\n",
    );
    std::fs::write(
        &data,
        "{\"text\": \"ok\"}\n{\"text\": 5}\n{\"prompt\": \"x\"}\n",
    )
    .unwrap();
    check(
        &[
            "eval",
            "--model",
            &m.path_str(),
            "--data",
            data.to_str().unwrap(),
        ],
        m.path(),
        1,
        "error: <TMP>/bad.jsonl:2: text: expected a string, found a number\n\
         <TMP>/bad.jsonl:3: completion: missing\n\
         hint: each line must be one JSON object, e.g. {\"text\": \"...\"}\n",
    );
}

#[test]
fn generate_streams_text_and_eval_prints_json() {
    let m = tiny_model(TinySpec::default());
    let run = tuna(
        &[
            "generate",
            "--model",
            &m.path_str(),
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "5",
            "--weights",
            "dense",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.starts_with("prompt: "), "{}", run.stderr);
    let data = m.path().join("t.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"the cat is in the hat\"}\n{\"text\": \"at the sea\"}\n",
    )
    .unwrap();
    let run = tuna(
        &[
            "eval",
            "--model",
            &m.path_str(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let at = |key: &str| {
        run.stdout
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert!(
        at("loss") < at("perplexity")
            && at("perplexity") < at("tokens")
            && at("tokens") < at("records")
    );
    assert_eq!(v["records"], 2);
    let (loss, ppl) = (
        v["loss"].as_f64().unwrap(),
        v["perplexity"].as_f64().unwrap(),
    );
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl);
}

#[test]
fn eval_limit_reads_only_the_records_it_scores_and_a_flood_of_errors_is_capped() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("many.jsonl");
    let mut text =
        String::from("{\"text\": \"the cat\"}\n{\"text\": \"a hat\"}\n\n{\"text\": \"at sea\"}\n");
    for _ in 0..500 {
        text.push_str("{\"txt\": \"typo\"}\n");
    }
    std::fs::write(&data, text).unwrap();
    let (model, path) = (m.path_str(), data.to_str().unwrap().to_string());
    let run = tuna(
        &[
            "eval", "--model", &model, "--data", &path, "--limit", "3", "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["records"], 3);

    // Without the limit every bad line counts, and the first 20 are shown.
    let mut want = String::from("error: ");
    for line in 5..25 {
        want.push_str(&format!("<TMP>/many.jsonl:{line}: (record): no known record kind: expected `text`, `prompt`+`completion`, `messages` or `instruction`+`output` (found: txt)\n"));
    }
    want.push_str("... and 480 more bad lines (500 in all; `tuna data validate --json FILE` lists every one)\n");
    want.push_str("hint: each line must be one JSON object, e.g. {\"text\": \"...\"}\n");
    let run = tuna(&["eval", "--model", &model, "--data", &path], &[]);
    assert_eq!(run.code, 1);
    assert_eq!(redact(&run.stderr, m.path()), want);

    // data validate --json lists every one.
    let run = tuna(
        &["data", "validate", "--model", &model, "--json", &path],
        &[],
    );
    assert_eq!(run.code, 1);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v[0]["errors"].as_array().unwrap().len(), 500);
}

#[test]
fn a_key_given_twice_in_a_record_is_refused() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("twice.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"2+2\", \"completion\": \"4\", \"completion\": \"5\"}\n",
    )
    .unwrap();
    check(
        &["eval", "--model", &m.path_str(), "--data", data.to_str().unwrap()],
        m.path(),
        1,
        "error: <TMP>/twice.jsonl:1: (line): invalid JSON: the key `completion` appears twice in one object (JSON keeps only the last) at line 1 column 49\n\
         hint: each line must be one JSON object, e.g. {\"text\": \"...\"}\n",
    );
}

#[test]
fn a_config_value_of_the_wrong_type_names_its_field() {
    let m = tiny_model(TinySpec::default());
    let config = m.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["hidden_size"] = "32".into();
    write_json(&config, &json);
    check(
        &["generate", "--model", &m.path_str(), "--prompt", "hi"],
        m.path(),
        1,
        "error: <TMP>/config.json: field `hidden_size`: invalid type: string \"32\", expected usize\n\
         hint: the model's config (config.json or GGUF metadata) is inconsistent: fix that field or download the model again\n",
    );
}

#[test]
fn a_config_with_fewer_layers_than_its_weights_is_refused() {
    let m = tiny_model(TinySpec::default());
    let config = m.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["num_hidden_layers"] = 1.into();
    write_json(&config, &json);
    check(
        &["generate", "--model", &m.path_str(), "--prompt", "hi"],
        m.path(),
        1,
        "error: <TMP>/config.json: field `num_hidden_layers`: is 1, but <TMP>/model.safetensors holds weights for 2 layers: the config and the weights disagree (a model cut short would run without its last layers)\n\
         hint: the model's config (config.json or GGUF metadata) is inconsistent: fix that field or download the model again\n",
    );
}

#[test]
fn one_vocabulary_across_subcommands_with_the_old_spellings_kept() {
    let tmp = tempfile::tempdir().unwrap();
    // The old spelling reaches the new flag: its error names the new one.
    for (args, want) in [
        (
            &["bench", "train", "--batch", "0"][..],
            "error: invalid value '0' for '--batch-size <N>': must be at least 1\n",
        ),
        (
            &["bench", "train", "--seq", "0"][..],
            "error: invalid value '0' for '--seq-len <N>': must be at least 1\n",
        ),
        (
            &["bench", "score", "--seq", "0"][..],
            "error: invalid value '0' for '--seq-len <N>': must be at least 1\n",
        ),
        (
            &["bench", "generate", "--new-tokens", "0"][..],
            "error: invalid value '0' for '--max-new-tokens <N>': must be at least 1\n",
        ),
        (
            &["export", "--output", "x", "--gguf", "--quant", "q9"][..],
            "error: invalid value 'q9' for '--quant <QUANT>': expected f16, q8_0 or q4_k\n",
        ),
    ] {
        check(
            args,
            tmp.path(),
            2,
            &format!("{want}\nFor more information, try '--help'.\n"),
        );
    }
    let run = tuna(&["generate", "--system", "terse", "--prompt", "hi"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("--system-prompt <TEXT>") && run.stderr.contains("--chat"),
        "{}",
        run.stderr
    );
}

#[test]
fn every_flag_has_help_and_train_shows_its_defaults() {
    for command in [
        &["generate"][..],
        &["eval"],
        &["compare"],
        &["export"],
        &["train"],
        &["study"],
        &["chat"],
        &["data", "validate"],
        &["data", "preview"],
        &["bench", "generate"],
        &["bench", "data"],
        &["bench", "train"],
        &["bench", "score"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = tuna(&args, &[]);
        assert_eq!(run.code, 0, "{command:?}");
        let lines: Vec<&str> = run.stdout.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let flag = line.trim_start();
            if !(flag.starts_with("--") || flag.starts_with('-') && flag.contains(", --")) {
                continue;
            }
            // The description follows on the same line (short help) or the next (long).
            let same_line = flag.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            assert!(
                same_line || !next.is_empty(),
                "tuna {} --help: {flag} has no description",
                command.join(" ")
            );
        }
    }
    let help = tuna(&["train", "--help"], &[]).stdout;
    for want in [
        "[config: optim.lr; default: 0.001]",
        "[config: encoding.max_seq_len; default: 512]",
        "[config: lora.r; default: 16]",
        "[config: train.eval_every; default: 50]",
        "[config: lora.target_modules; default: \"all-linear\"]",
    ] {
        assert!(help.contains(want), "train --help lacks {want}:\n{help}");
    }
    let version = tuna(&["--version"], &[]).stdout;
    assert!(
        version.starts_with(&format!("tuna {} (commit ", env!("CARGO_PKG_VERSION")))
            && version.contains("; features: "),
        "{version}"
    );
}

#[test]
fn json_goes_to_stdout_in_generate_preview_and_export() {
    let m = tiny_model(TinySpec::default());
    let model = m.path_str();
    let run = tuna(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "4",
            "--weights",
            "f32",
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(
        v["text"].is_string() && v["generated_tokens"].as_u64().unwrap() <= 4,
        "{v}"
    );

    let data = m.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"the cat\", \"completion\": \"hat\"}\n{\"text\": \"at sea\"}\nnot json\n",
    )
    .unwrap();
    let run = tuna(
        &[
            "data",
            "preview",
            "--model",
            &model,
            "--limit",
            "1",
            "--json",
            data.to_str().unwrap(),
        ],
        &[],
    );
    // Only the record shown is read: the bad third line is not an error here.
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["line"], 1);
    let runs = v[0]["runs"].as_array().unwrap();
    assert!(runs.iter().any(|r| r["trained"] == true), "{v}");
    let trained: usize = runs
        .iter()
        .filter(|r| r["trained"] == true)
        .map(|r| r["ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(v[0]["trained"], trained);

    let out = m.path().join("export");
    let run = tuna(
        &[
            "export",
            "--model",
            &model,
            "--output",
            out.to_str().unwrap(),
            "--gguf",
            "--quant",
            "q8-0",
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["model_dir"], out.display().to_string());
    assert_eq!(v["gguf"], out.join("model-q8_0.gguf").display().to_string());
}

#[test]
fn eval_and_data_encode_as_a_training_config_says() {
    let m = tiny_model(TinySpec::default());
    let data = m.path().join("d.jsonl");
    std::fs::write(&data, "{\"question\": \"the cat\", \"answer\": \"hat\"}\n").unwrap();
    let config = m.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\n[encoding]\nprompt_template = \"Q: {{prompt}}\\nA:\"\nformat = \"raw\"\n[fields]\nprompt = \"question\"\ncompletion = \"answer\"\n",
            m.path_str()
        ),
    )
    .unwrap();
    let preview = |extra: &[&str]| {
        let mut args = vec!["data", "preview", "--json", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        tuna(&args, &[])
    };
    let run = preview(&["-c", config.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v[0]["runs"][0]["text"], "Q: the cat\nA:");
    // A flag overrides the file.
    let run = preview(&[
        "-c",
        config.to_str().unwrap(),
        "--prompt-template",
        "{prompt} ->",
    ]);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v[0]["runs"][0]["text"], "the cat ->");
    let run = tuna(
        &[
            "eval",
            "-c",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}
