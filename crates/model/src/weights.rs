//! Reading parameters by their Hugging Face names from safetensors (single or sharded) or a
//! GGUF file, in the dtype and on the device the decoder asks for. GGUF tensors are
//! dequantized, and their q/k rows put back in Hugging Face order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::gguf::{gguf_name, GgufFile};
use crate::quant_weight::QuantWeight;

pub enum WeightSource {
    Safetensors {
        shards: Vec<(PathBuf, MmapedSafetensors)>,
        /// tensor name -> index in `shards`
        index: HashMap<String, usize>,
    },
    Gguf {
        gguf: GgufFile,
        /// (heads, kv_heads) when q/k rows are stored permuted for interleaved rope.
        permuted_heads: Option<(usize, usize)>,
    },
}

impl WeightSource {
    pub fn safetensors(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            if !path.is_file() {
                return Err(ModelError::MissingFile {
                    path: path.clone(),
                    what: "safetensors shard",
                });
            }
            // Safety: the file is mapped read-only; tuna never writes a model it is reading.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                ModelError::BadSafetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            shards.push((path.clone(), st));
        }
        Ok(Self::Safetensors { shards, index })
    }

    pub fn gguf(gguf: GgufFile, heads: usize, kv_heads: usize) -> Self {
        let permuted_heads = gguf.qk_rows_permuted().then_some((heads, kv_heads));
        Self::Gguf {
            gguf,
            permuted_heads,
        }
    }

    /// Where the weights come from, for error messages.
    pub fn path(&self) -> &Path {
        match self {
            Self::Safetensors { shards, .. } => shards
                .first()
                .map(|(p, _)| p.as_path())
                .unwrap_or(Path::new("")),
            Self::Gguf { gguf, .. } => &gguf.path,
        }
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            Self::Safetensors { index, .. } => index.contains_key(hf_name),
            Self::Gguf { gguf, .. } => {
                gguf_name(hf_name).is_some_and(|n| gguf.content.tensor_infos.contains_key(&n))
            }
        }
    }

    /// The number of decoder layers the file holds weights for (the highest layer index
    /// plus one), whatever the config says.
    pub fn layers_held(&self) -> usize {
        let index_after = |name: &str, prefix: &str| -> Option<usize> {
            name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
        };
        let highest = match self {
            Self::Safetensors { index, .. } => index
                .keys()
                .filter_map(|n| index_after(n, "model.layers."))
                .max(),
            Self::Gguf { gguf, .. } => gguf
                .content
                .tensor_infos
                .keys()
                .filter_map(|n| index_after(n, "blk."))
                .max(),
        };
        highest.map_or(0, |h| h + 1)
    }

    /// The shape `hf_name` has in the file (Hugging Face orientation), without loading it.
    pub fn shape_of(&self, hf_name: &str) -> Option<Vec<usize>> {
        match self {
            Self::Safetensors { shards, index } => {
                let &i = index.get(hf_name)?;
                shards[i].1.get(hf_name).ok().map(|t| t.shape().to_vec())
            }
            Self::Gguf { gguf, .. } => {
                let name = gguf_name(hf_name)?;
                gguf.content
                    .tensor_infos
                    .get(&name)
                    .map(|info| info.shape.dims().to_vec())
            }
        }
    }

    /// Loads `hf_name`, checks its shape, converts to `dtype` on `device`.
    pub fn tensor(
        &mut self,
        hf_name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let path = self.path().to_path_buf();
        let bad = |reason: String| ModelError::BadTensor {
            path: path.clone(),
            name: hf_name.into(),
            reason,
        };
        let tensor = match self {
            Self::Safetensors { shards, index } => {
                let &i = index.get(hf_name).ok_or_else(|| bad("missing".into()))?;
                let (shard_path, st) = &shards[i];
                st.load(hf_name, &Device::Cpu)
                    .map_err(|e| ModelError::BadTensor {
                        path: shard_path.clone(),
                        name: hf_name.into(),
                        reason: e.to_string(),
                    })?
            }
            Self::Gguf {
                gguf,
                permuted_heads,
            } => {
                let name = gguf_name(hf_name).ok_or_else(|| bad("no GGUF equivalent".into()))?;
                let q = gguf
                    .content
                    .tensor(&mut gguf.file, &name, &Device::Cpu)
                    .map_err(|e| bad(format!("(GGUF `{name}`) {e}")))?;
                let t = q.dequantize(&Device::Cpu).map_err(|e| bad(e.to_string()))?;
                match permuted_heads {
                    Some((heads, _)) if name.contains(".attn_q.") => unpermute_rows(&t, *heads)?,
                    Some((_, kv_heads)) if name.contains(".attn_k.") => {
                        unpermute_rows(&t, *kv_heads)?
                    }
                    _ => t,
                }
            }
        };
        if tensor.dims() != shape {
            return Err(bad(format!(
                "shape {:?}, expected {:?}",
                tensor.dims(),
                shape
            )));
        }
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }
}

impl WeightSource {
    /// `hf_name` as the file's own blocks, q/k rows in Hugging Face order; None when the
    /// source is not a GGUF file (safetensors hold dense tensors).
    pub fn blocks(&mut self, hf_name: &str, shape: &[usize]) -> Result<Option<QuantWeight>> {
        let path = self.path().to_path_buf();
        let Self::Gguf {
            gguf,
            permuted_heads,
        } = self
        else {
            return Ok(None);
        };
        let bad = |reason: String| ModelError::BadTensor {
            path: path.clone(),
            name: hf_name.into(),
            reason,
        };
        let name = gguf_name(hf_name).ok_or_else(|| bad("no GGUF equivalent".into()))?;
        let q = gguf
            .content
            .tensor(&mut gguf.file, &name, &Device::Cpu)
            .map_err(|e| bad(format!("(GGUF `{name}`) {e}")))?;
        if q.shape().dims() != shape {
            return Err(bad(format!(
                "shape {:?}, expected {:?}",
                q.shape().dims(),
                shape
            )));
        }
        let w = QuantWeight::from_qtensor(&q).map_err(|e| bad(format!("(GGUF `{name}`) {e}")))?;
        let heads = match permuted_heads {
            Some((heads, _)) if name.contains(".attn_q.") => *heads,
            Some((_, kv_heads)) if name.contains(".attn_k.") => *kv_heads,
            _ => return Ok(Some(w)),
        };
        Ok(Some(w.reorder_rows(&unpermuted_order(shape[0], heads))))
    }
}

/// For each Hugging Face q/k row, the GGUF row it is stored in (see `unpermute_rows`):
/// within a head, HF row a·hd/2 + j is GGUF row 2j + a.
fn unpermuted_order(out: usize, heads: usize) -> Vec<usize> {
    let hd = out / heads;
    (0..out)
        .map(|r| {
            let (h, within) = (r / hd, r % hd);
            let (a, j) = (within / (hd / 2), within % (hd / 2));
            h * hd + 2 * j + a
        })
        .collect()
}

/// Undoes llama.cpp's `permute` of q/k rows (convert_hf_to_gguf.py, LlamaModel.permute):
/// GGUF row order within a head is (hd/2, 2), Hugging Face's is (2, hd/2).
/// Works for weights (out, in) and biases (out,).
pub fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = out / heads;
    // (out, rest) -> (heads, hd/2, 2, rest) -> (heads, 2, hd/2, rest) -> (out, rest)
    t.reshape((heads, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// llama.cpp's `permute` of q/k rows, the inverse of `unpermute_rows`: Hugging Face's row
/// order within a head, (2, hd/2), to GGUF's (hd/2, 2).
pub fn permute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = out / heads;
    // (out, rest) -> (heads, 2, hd/2, rest) -> (heads, hd/2, 2, rest) -> (out, rest)
    t.reshape((heads, 2, hd / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}
