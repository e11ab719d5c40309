//! `tuna export`: the base model with its adapter folded in, as a Hugging Face directory and
//! optionally a GGUF file.

use tuna_model::export;

use crate::args::ExportArgs;
use crate::model_args::InferenceWeights;

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let quant = args.gguf.then_some(args.quant);
    if args.lora_gguf && args.model.adapter.is_none() {
        anyhow::bail!("--lora-gguf: there is no adapter to write (pass --adapter DIR)");
    }
    if args.merge && args.model.adapter.is_none() {
        anyhow::bail!("--merge: there is no adapter to fold in (pass --adapter DIR)");
    }
    // Refuse a bad or occupied target before the slow part.
    if args.output.is_file() {
        return Err(tuna_model::ModelError::BadExportTarget {
            path: args.output.clone(),
            reason: "is a file: name a directory to write the model into".into(),
        }
        .into());
    }
    if !args.force && std::fs::read_dir(&args.output).is_ok_and(|mut d| d.next().is_some()) {
        return Err(tuna_model::ModelError::ExportTargetExists {
            path: args.output.clone(),
        }
        .into());
    }
    // The merge runs on the CPU (in f64, stored in f32 unless --dtype says otherwise), so a
    // GPU build exports the same weights as a CPU one.
    let mut model_args = args.model.clone();
    model_args.device = "cpu".into();
    let mut model = model_args.load(InferenceWeights::Dense)?;
    if args.lora_gguf {
        export::export_lora_gguf(&mut model, &args.output, args.force)?;
        let path = args
            .output
            .join(export::LORA_GGUF_FILE)
            .display()
            .to_string();
        match args.json {
            true => println!("{}", serde_json::json!({ "lora_gguf": path })),
            false => println!("{path}"),
        }
        return Ok(());
    }
    if args.model.adapter.is_some() {
        model.model.merge_lora()?;
    } else {
        eprintln!("no --adapter: exporting the base model as it is");
    }
    if matches!(
        model.config.rope_scaling,
        Some(tuna_model::config::RopeScaling::Factors { .. })
    ) && quant.is_some()
    {
        eprintln!("the model's per-frequency rope factors have no config.json form: writing the GGUF only");
    }
    export::export(&model, &args.output, quant, args.force)?;
    let model_dir = args
        .output
        .join("config.json")
        .is_file()
        .then(|| args.output.display().to_string());
    let gguf = quant.map(|q| {
        args.output
            .join(export::gguf_file_name(q))
            .display()
            .to_string()
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "model_dir": model_dir, "gguf": gguf })
        );
    } else {
        for path in model_dir.iter().chain(&gguf) {
            println!("{path}");
        }
    }
    Ok(())
}
