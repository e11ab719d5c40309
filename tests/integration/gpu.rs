//! GPU parity, compiled only into a `cuda` or `metal` build (scripts/gpu-check.sh builds and
//! runs it on a GPU machine): on the GPU, in f32, the decoder gives the CPU's logits on every
//! architecture flag and on SmolLM2, a loaded adapter applies the same, the training pass
//! (candle's autograd there; the hand-written pass is CPU-only) gives the CPU pass's loss and
//! gradients, and greedy generation picks the CPU's tokens. Where the build has a GPU feature
//! but no GPU is present, these tests fail: they exist to run on one.

use candle_core::{DType, Device, Tensor, Var};
use tuna_data::{make_batch, Example};
use tuna_lora::LoraConfig;
use tuna_model::{Kernels, LoadOptions, Pretrained};
use tuna_testkit::{assert_same_gradient, max_abs_diff, smollm2_gguf, tiny_model, TinySpec};

use crate::util::greedy_animal;

fn gpu() -> Device {
    if cfg!(feature = "cuda") {
        Device::new_cuda(0).expect("a CUDA build's GPU tests need a GPU")
    } else {
        Device::new_metal(0).expect("a Metal build's GPU tests need a GPU")
    }
}

fn f32_on(device: &Device) -> LoadOptions {
    LoadOptions {
        device: device.clone(),
        dtype: Some(DType::F32),
        ..Default::default()
    }
}

fn specs() -> Vec<(&'static str, TinySpec)> {
    vec![
        ("llama (GQA, tied head)", TinySpec::default()),
        (
            "qwen2 (bias, untied head)",
            TinySpec {
                model_type: "qwen2",
                attention_bias: true,
                tie_word_embeddings: false,
                ..Default::default()
            },
        ),
        (
            "mistral (sliding window)",
            TinySpec {
                model_type: "mistral",
                sliding_window: Some(4),
                ..Default::default()
            },
        ),
    ]
}

fn ids(device: &Device) -> Tensor {
    Tensor::new(&[3u32, 17, 42, 7, 99, 5, 61, 8, 23], device)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Adapters on every projection with the same seeded A and B on whichever device.
fn with_adapter(p: &mut Pretrained) {
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..Default::default()
    };
    p.model.attach_lora(&config, 5).unwrap();
    let device = p.model.device().clone();
    for (k, (_, _, b)) in p.model.lora_vars().into_iter().enumerate() {
        let values: Vec<f32> = (0..b.elem_count())
            .map(|i| (((i * 7 + k * 13) % 17) as f32 - 8.0) * 0.02)
            .collect();
        b.set(&Tensor::from_vec(values, b.shape(), &device).unwrap())
            .unwrap();
    }
}

#[test]
fn gpu_logits_equal_cpu_logits() {
    let gpu = gpu();
    for (what, spec) in specs() {
        let m = tiny_model(spec);
        let mut cpu = Pretrained::load(&m.path_str(), &f32_on(&Device::Cpu)).unwrap();
        let mut on_gpu = Pretrained::load(&m.path_str(), &f32_on(&gpu)).unwrap();
        for adapter in [false, true] {
            if adapter {
                with_adapter(&mut cpu);
                with_adapter(&mut on_gpu);
            }
            for kernels in [Kernels::Fused, Kernels::Differentiable] {
                let want = cpu.model.forward(&ids(&Device::Cpu), kernels).unwrap();
                let got = on_gpu
                    .model
                    .forward(&ids(&gpu), kernels)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{what}, adapter {adapter}, {kernels:?}: {d}");
            }
        }
    }
}

#[test]
fn gpu_training_pass_equals_the_cpu_pass() {
    let gpu = gpu();
    for (what, spec) in specs() {
        let m = tiny_model(spec);
        let mut passes = Vec::new();
        for device in [Device::Cpu, gpu.clone()] {
            let mut p = Pretrained::load(&m.path_str(), &f32_on(&device)).unwrap();
            with_adapter(&mut p);
            p.model.set_training(true);
            let vocab = p.config.vocab_size as u32;
            let examples: Vec<Example> = [9usize, 5, 12]
                .iter()
                .enumerate()
                .map(|(k, &len)| Example {
                    line: k + 1,
                    ids: (0..len)
                        .map(|i| ((k * 31 + i * 7 + 3) as u32) % vocab)
                        .collect(),
                    trained: (0..len).map(|i| i >= len / 2).collect(),
                    truncated: false,
                })
                .collect();
            let batch = make_batch(&examples, &[vec![0], vec![1], vec![2]], 0, 8);
            let vars: Vec<Var> = p
                .model
                .lora_vars()
                .into_iter()
                .flat_map(|(_, a, b)| [a, b])
                .collect();
            let pass =
                tuna_train::loss::loss_and_grads(&p.model, &batch, 1.0 / batch.n_targets as f64, 0)
                    .unwrap();
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| {
                    pass.grads
                        .get(v.as_tensor())
                        .expect("every adapter tensor gets a gradient")
                        .to_device(&Device::Cpu)
                        .unwrap()
                })
                .collect();
            passes.push((pass.loss, grads));
        }
        let ((cpu_loss, cpu_grads), (gpu_loss, gpu_grads)) = (&passes[0], &passes[1]);
        assert!(
            (cpu_loss - gpu_loss).abs() < 1e-4 * cpu_loss.abs(),
            "{what}: loss {gpu_loss} on the GPU, {cpu_loss} on the CPU"
        );
        for (k, (a, b)) in gpu_grads.iter().zip(cpu_grads).enumerate() {
            assert_same_gradient(a, b, &format!("{what}: tensor {k}"));
        }
    }
}

#[test]
fn smollm2_on_the_gpu_scores_and_generates_as_on_the_cpu() {
    let gpu = gpu();
    let path = smollm2_gguf().display().to_string();
    let cpu = Pretrained::load(&path, &f32_on(&Device::Cpu)).unwrap();
    let on_gpu = Pretrained::load(&path, &f32_on(&gpu)).unwrap();
    let want = cpu
        .model
        .forward(&ids(&Device::Cpu), Kernels::Fused)
        .unwrap();
    let got = on_gpu
        .model
        .forward(&ids(&gpu), Kernels::Fused)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-3, "SmolLM2 logits, GPU vs CPU: {d}");
    assert_eq!(
        greedy_animal(&cpu),
        greedy_animal(&on_gpu),
        "greedy tokens, CPU vs GPU"
    );
}
