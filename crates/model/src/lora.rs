//! LoRA on the decoder: attaching fresh adapters, loading PEFT ones, saving, merging. Module
//! names are Hugging Face's (`model.layers.3.self_attn.q_proj`), so PEFT keys follow from them;
//! q/k rows are already in Hugging Face order even for GGUF bases (`weights` un-permutes them),
//! so adapters trained on a GGUF load in PEFT on the HF model and the other way round.

use std::path::Path;

use candle_core::Var;
use rand::SeedableRng;
use tuna_lora::peft::{self, LoadedAdapter};
use tuna_lora::{LoraAdapter, LoraConfig, LoraError};

use crate::decoder::Llama;
use crate::linear::Linear;

impl Llama {
    /// Every projection: (HF module name, layer, short name, linear).
    pub fn projections_mut(&mut self) -> Vec<(String, usize, &'static str, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            out.push((format!("{p}.self_attn.q_proj"), i, "q_proj", &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), i, "k_proj", &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), i, "v_proj", &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), i, "o_proj", &mut a.o_proj));
            out.push((
                format!("{p}.mlp.gate_proj"),
                i,
                "gate_proj",
                &mut m.gate_proj,
            ));
            out.push((format!("{p}.mlp.up_proj"), i, "up_proj", &mut m.up_proj));
            out.push((
                format!("{p}.mlp.down_proj"),
                i,
                "down_proj",
                &mut m.down_proj,
            ));
        }
        out
    }

    /// Seeds the dropout masks of the next differentiable pass (the hand-written pass takes
    /// its seed as an argument): each adapter's mask then follows from (seed, its module), as
    /// in the hand-written pass, so the two drop the same inputs.
    pub fn seed_dropout(&self, seed: u64) {
        for adapter in self.adapters() {
            adapter.seed_pass(seed);
        }
    }

    /// The adapters attached, in projection order.
    pub fn adapters(&self) -> Vec<&LoraAdapter> {
        let mut out = Vec::new();
        for layer in &self.layers {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            for linear in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ] {
                out.extend(linear.adapter.as_ref());
            }
        }
        out
    }

    /// Trainable parameters of the attached adapters (every A and B).
    pub fn adapter_parameters(&self) -> usize {
        self.adapters()
            .iter()
            .map(|a| a.a.elem_count() + a.b.elem_count())
            .sum()
    }

    /// Attaches fresh adapters (A Kaiming-uniform, B zero) to the modules `config` targets.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<(), LoraError> {
        config.validate(self.config.num_hidden_layers)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let device = self.device().clone();
        let mut attached = 0;
        for (stream, (module, layer, _, linear)) in self.projections_mut().into_iter().enumerate() {
            if config.targets(&module, layer) {
                let mut adapter = LoraAdapter::init(
                    linear.in_features,
                    linear.out_features,
                    config.rank_for(&module),
                    config.scale_for(&module),
                    config.lora_dropout,
                    &mut rng,
                    &device,
                )?;
                adapter.stream = stream as u64;
                linear.adapter = Some(adapter);
                attached += 1;
            }
        }
        if attached == 0 {
            return Err(LoraError::bad_config(
                "target_modules",
                format!(
                    "{} (with layers_to_transform {:?}) selects no projection of this model",
                    serde_json::to_string(&config.target_modules).unwrap_or_default(),
                    config.layers_to_transform
                ),
            ));
        }
        Ok(())
    }

    /// Attaches a PEFT adapter read from disk; shapes are checked against the base, and
    /// the tensor that does not fit is named.
    pub fn load_lora(&mut self, loaded: &LoadedAdapter) -> Result<(), LoraError> {
        let config = &loaded.config;
        config.validate(self.config.num_hidden_layers)?;
        let weights = loaded.dir.join(peft::WEIGHTS_FILE);
        let device = self.device().clone();
        let mut used = 0;
        for (stream, (module, layer, _, linear)) in self.projections_mut().into_iter().enumerate() {
            let Some((a, b)) = loaded.tensors.get(&module) else {
                continue;
            };
            let key = peft::module_key(&module);
            // PEFT builds only the modules the config names, so a tensor outside them would
            // act here and not there.
            if !config.targets(&module, layer) {
                return Err(LoraError::BadAdapterFile {
                    path: weights.clone(),
                    field: format!("{key}.lora_A.weight"),
                    reason: "adapter_config.json's target_modules / layers_to_transform leave this module out (PEFT would not load it)".into(),
                });
            }
            let check = |name: &str, t: &candle_core::Tensor, want: [usize; 2]| {
                if t.dims() != want {
                    Err(LoraError::BadAdapterFile {
                        path: weights.clone(),
                        field: format!("{key}.{name}.weight"),
                        reason: format!("shape {:?}, this base model needs {:?} (an adapter for another model?)", t.dims(), want),
                    })
                } else {
                    Ok(())
                }
            };
            let r = config.rank_for(&module);
            check("lora_A", a, [r, linear.in_features])?;
            check("lora_B", b, [linear.out_features, r])?;
            let mut adapter = LoraAdapter::from_tensors(
                &a.to_device(&device)?,
                &b.to_device(&device)?,
                config.scale_for(&module),
                config.lora_dropout,
            )?;
            adapter.stream = stream as u64;
            linear.adapter = Some(adapter);
            used += 1;
        }
        if used != loaded.tensors.len() {
            let known: Vec<String> = self
                .projections_mut()
                .into_iter()
                .map(|(m, ..)| m)
                .collect();
            let stray = loaded
                .tensors
                .keys()
                .find(|m| !known.contains(m))
                .cloned()
                .unwrap_or_default();
            return Err(LoraError::BadAdapterFile {
                path: weights,
                field: format!("{}.lora_A.weight", peft::module_key(&stray)),
                reason: "this base model has no such module (an adapter for another model?)".into(),
            });
        }
        Ok(())
    }

    /// The trainable tensors, (HF module name, A, B), in a fixed order.
    pub fn lora_vars(&mut self) -> Vec<(String, Var, Var)> {
        self.projections_mut()
            .into_iter()
            .filter_map(|(m, _, _, l)| l.adapter.as_ref().map(|a| (m, a.a.clone(), a.b.clone())))
            .collect()
    }

    pub fn has_lora(&mut self) -> bool {
        !self.lora_vars().is_empty()
    }

    /// Saves the adapters in PEFT's layout.
    pub fn save_lora(&mut self, dir: &Path, config: &LoraConfig) -> Result<(), LoraError> {
        let adapters: Vec<(String, candle_core::Tensor, candle_core::Tensor)> = self
            .lora_vars()
            .into_iter()
            .map(|(m, a, b)| (m, a.as_tensor().clone(), b.as_tensor().clone()))
            .collect();
        peft::save(dir, config, &adapters)
    }

    /// Dropout in the adapters on (training) or off.
    pub fn set_training(&mut self, training: bool) {
        for (.., l) in self.projections_mut() {
            if let Some(a) = l.adapter.as_mut() {
                a.training = training;
            }
        }
    }

    /// Folds every adapter into its base weight.
    pub fn merge_lora(&mut self) -> candle_core::Result<()> {
        for (.., l) in self.projections_mut() {
            l.merge_adapter()?;
        }
        Ok(())
    }
}
