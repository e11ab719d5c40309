//! `tuna export`: the base model with its adapter folded in, as a Hugging Face directory and
//! optionally a GGUF file.

use anyhow::Context;
use tuna_model::export::{self, GgufQuant};

use crate::args::ExportArgs;
use crate::model_args::InferenceWeights;

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let quant = match args.gguf {
        true => Some(GgufQuant::parse(&args.quant).with_context(|| {
            format!(
                "--quant: unknown encoding {:?} (f16, q8_0, q4_k)",
                args.quant
            )
        })?),
        false => None,
    };
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
        println!("{}", args.output.join(export::LORA_GGUF_FILE).display());
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
    if args.output.join("config.json").is_file() {
        println!("{}", args.output.display());
    }
    if let Some(q) = quant {
        println!("{}", args.output.join(export::gguf_file_name(q)).display());
    }
    Ok(())
}
