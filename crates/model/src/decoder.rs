//! The Llama-family decoder: one implementation for Llama 2/3, SmolLM2, TinyLlama, Mistral
//! and Qwen2, the differences being `LlamaConfig` fields (qkv bias, tied head, GQA, rope
//! scaling, sliding window). Follows transformers' modeling_llama.py
//! (https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/models/llama/modeling_llama.py).
//!
//! b batch, t new tokens, s attended positions (cache + new), d hidden, h heads,
//! kvh kv heads, g = h / kvh, hd head dim, v vocab, ff intermediate.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::layout::AttentionLayout;
use crate::linear::{Linear, WeightFormat};
use crate::ops::{self, Kernels};
use crate::rope::Rope;
use crate::weights::WeightSource;

/// Rows holding several examples (packing): each token's position within its own example and
/// the example it belongs to, row-major (b, t). Attention never crosses examples.
#[derive(Debug, Clone, Copy)]
pub struct Packing<'a> {
    pub positions: &'a [u32],
    pub segments: &'a [u32],
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

/// Where the new tokens sit: consecutive from a start position, or each at its own position
/// (packing) with its rope tables (b, 1, t, f).
#[derive(Debug, Clone, Copy)]
enum Positions<'a> {
    From(usize),
    PerToken(&'a (Tensor, Tensor)),
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    /// (v, d)
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// Shares `embed_tokens`' storage when the embeddings are tied.
    pub lm_head: Linear,
    pub(crate) rope: Rope,
}

impl Llama {
    /// Builds the decoder from weights named as in Hugging Face checkpoints. Projections are
    /// converted to `format` as soon as each is read, so the dense copies never all sit in
    /// memory at once.
    pub fn load(
        config: &LlamaConfig,
        weights: &mut WeightSource,
        dtype: DType,
        device: &Device,
        format: WeightFormat,
    ) -> std::result::Result<Self, ModelError> {
        let c = config;
        let (d, hd, ff, v) = (c.hidden_size, c.head_dim, c.intermediate_size, c.vocab_size);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        // The file's own blocks for projections, where asked and the file is GGUF on the CPU.
        let file_blocks = format == WeightFormat::File && device.is_cpu();
        let linear = |weights: &mut WeightSource,
                      name: &str,
                      out: usize,
                      inp: usize,
                      bias: Option<&str>|
         -> std::result::Result<Linear, ModelError> {
            let b = match bias {
                Some(b) => Some(weights.tensor(b, &[out], dtype, device)?),
                None => None,
            };
            let mut linear = match file_blocks {
                true => match weights.blocks(name, &[out, inp])? {
                    Some(q) => Linear::from_quant(q, b),
                    None => Linear::new(weights.tensor(name, &[out, inp], dtype, device)?, b)?,
                },
                false => Linear::new(weights.tensor(name, &[out, inp], dtype, device)?, b)?,
            };
            linear.convert(format)?;
            // k and v stay in the cache for every later token, so the 8-bit rounding of
            // their inputs accumulates: over 200 tokens of generation the loss rose 0.93%
            // with them on the int8 kernels and 0.30% without (BENCHMARKS.md).
            if !name.contains(".k_proj.") && !name.contains(".v_proj.") {
                linear.allow_int8_products();
            }
            Ok(linear)
        };

        let embed_tokens = weights.tensor("model.embed_tokens.weight", &[v, d], dtype, device)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut proj = |module: &str, out: usize, inp: usize, bias: bool| {
                let weight = format!("{p}.{module}.weight");
                let bias = bias.then(|| format!("{p}.{module}.bias"));
                linear(weights, &weight, out, inp, bias.as_deref())
            };
            let self_attn = Attention {
                q_proj: proj("self_attn.q_proj", q_out, d, c.attention_bias)?,
                k_proj: proj("self_attn.k_proj", kv_out, d, c.attention_bias)?,
                v_proj: proj("self_attn.v_proj", kv_out, d, c.attention_bias)?,
                o_proj: proj("self_attn.o_proj", d, q_out, c.o_proj_bias)?,
            };
            let mlp = Mlp {
                gate_proj: proj("mlp.gate_proj", ff, d, c.mlp_bias)?,
                up_proj: proj("mlp.up_proj", ff, d, c.mlp_bias)?,
                down_proj: proj("mlp.down_proj", d, ff, c.mlp_bias)?,
            };
            let mut norm =
                |name: &str| weights.tensor(&format!("{p}.{name}.weight"), &[d], dtype, device);
            layers.push(DecoderLayer {
                input_layernorm: norm("input_layernorm")?,
                self_attn,
                post_attention_layernorm: norm("post_attention_layernorm")?,
                mlp,
            });
        }
        let norm = weights.tensor("model.norm.weight", &[d], dtype, device)?;
        let lm_head = if c.tie_word_embeddings && !file_blocks {
            let mut head = Linear::new(embed_tokens.clone(), None)?;
            head.convert(format)?;
            head.allow_int8_products();
            head
        } else {
            let name = if c.tie_word_embeddings {
                "model.embed_tokens.weight"
            } else {
                "lm_head.weight"
            };
            linear(weights, name, v, d, None)?
        };
        Ok(Self {
            config: c.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(c, device),
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Every parameter under its Hugging Face name (dense; the tied head is not repeated).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        let push_linear =
            |out: &mut Vec<(String, Tensor)>, name: String, l: &Linear| -> Result<()> {
                out.push((format!("{name}.weight"), l.dense_weight()?));
                if let Some(b) = &l.bias {
                    out.push((format!("{name}.bias"), b.clone()));
                }
                Ok(())
            };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, m) = (&layer.self_attn, &layer.mlp);
            for (name, l) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                push_linear(&mut out, format!("{p}.{name}"), l)?;
            }
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.config.tie_word_embeddings {
            push_linear(&mut out, "lm_head".to_string(), &self.lm_head)?;
        }
        Ok(out)
    }

    /// Logits for every position: ids (b, t) -> (b, t, v). No cache; positions start at 0.
    pub fn forward(&self, ids: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let layout = AttentionLayout::causal(b, t, 0, self.config.sliding_window);
        self.logits(&self.hidden_states(ids, &layout, None, kernels)?)
    }

    /// Runs `ids` (b, t) after the positions already in `cache` and returns the logits of the
    /// last new position, (b, v).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let layout = AttentionLayout::causal(b, t, cache.len(), self.config.sliding_window);
        let hidden = self.hidden_states(ids, &layout, Some(cache), Kernels::Fused)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)
    }

    /// The vocabulary projection of hidden states (.., d) -> (.., v).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// The one forward: embeddings, every layer, the final norm, for ids (b, t) laid out as
    /// `layout` says (after the positions in `cache`, which it then holds too). Returns the
    /// hidden states (b, t, d), before the head.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        layout: &AttentionLayout,
        mut cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        if (layout.rows, layout.queries, layout.start()) != (b, t, start) {
            candle_core::bail!(
                "attention layout for {} rows of {} tokens after {}, given {b} rows of {t} after {start}",
                layout.rows,
                layout.queries,
                layout.start()
            );
        }
        let mask = layout.mask(self.dtype(), self.device())?;
        let tables;
        let at = match layout.consecutive_from() {
            Some(from) => Positions::From(from),
            None => {
                let (cos, sin) = self.rope.tables_at(&layout.positions(), self.dtype())?;
                let f = self.config.head_dim / 2;
                // (b*t, f) -> (b, 1, t, f)
                tables = (cos.reshape((b, 1, t, f))?, sin.reshape((b, 1, t, f))?);
                Positions::PerToken(&tables)
            }
        };
        // (b, t) -> (b, t, d)
        let d = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        for (layer, block) in self.layers.iter().enumerate() {
            let context = LayerContext {
                layer,
                at,
                mask: mask.as_ref(),
                rope: &self.rope,
                config: &self.config,
                kernels,
            };
            x = block.forward(&x, &context, cache.as_deref_mut())?;
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps, kernels)
    }
}

/// What every layer of one forward shares besides its input and the cache.
struct LayerContext<'a> {
    layer: usize,
    at: Positions<'a>,
    /// Additive (1 or b, 1, 1, t, s), or None when every query sees every key.
    mask: Option<&'a Tensor>,
    rope: &'a Rope,
    config: &'a LlamaConfig,
    kernels: Kernels,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        context: &LayerContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (eps, kernels) = (context.config.rms_norm_eps, context.kernels);
        let h = ops::rms_norm(x, &self.input_layernorm, eps, kernels)?;
        let x = (x + self.self_attn.forward(&h, context, cache)?)?;
        let h = ops::rms_norm(&x, &self.post_attention_layernorm, eps, kernels)?;
        x + self.mlp.forward(&h, kernels)?
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        self.down_proj.forward(&ops::silu_mul(&gate, &up, kernels)?)
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        context: &LayerContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let LayerContext {
            layer,
            at,
            mask,
            rope,
            config,
            kernels,
        } = *context;
        let (b, t, _d) = x.dims3()?;
        let (h, kvh, hd) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let g = h / kvh;
        // (b, t, h*hd) -> (b, t, h, hd) -> (b, h, t, hd)
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, h, hd))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape((b, t, kvh, hd))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, kvh, hd))?
            .transpose(1, 2)?;
        let (q, k) = match at {
            Positions::From(start) => (
                rope.apply(&q, start, kernels)?,
                rope.apply(&k, start, kernels)?,
            ),
            Positions::PerToken((cos, sin)) => {
                (Rope::rotate(&q, cos, sin)?, Rope::rotate(&k, cos, sin)?)
            }
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, &k, &v)?,
            None => (k, v.contiguous()?),
        };
        let s = k.dim(2)?;
        // Query head i reads kv head i / g (transformers' repeat_kv). Grouping the queries
        // instead of repeating k/v: (b, h, t, hd) -> (b, kvh, g*t, hd)
        let q = q.contiguous()?.reshape((b, kvh, g * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            // (b, kvh, g*t, s) -> (b, kvh, g, t, s) + (1 or b, 1, 1, t, s)
            Some(mask) => scores
                .reshape((b, kvh, g, t, s))?
                .broadcast_add(mask)?
                .reshape((b, kvh, g * t, s))?,
            None => scores,
        };
        let probs = ops::softmax_last_dim(&scores, kernels)?;
        // (b, kvh, g*t, hd) -> (b, h, t, hd) -> (b, t, h, hd) -> (b, t, h*hd)
        let y = probs
            .matmul(&v)?
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, h * hd))?;
        self.o_proj.forward(&y)
    }
}

/// Mean cross-entropy helper input: log-probabilities over the vocabulary (.., v).
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}
