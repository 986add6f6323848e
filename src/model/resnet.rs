//! ResNet encoders f(·) (He et al. 2015, <https://arxiv.org/abs/1512.03385>) with a width
//! multiplier and the CIFAR stem used by SimCLR for small images.
//!
//! SimCLR, Appendix B.9: "we replace the first 7x7 Conv of stride 2 with 3x3 Conv of stride 1,
//! and also remove the first max pooling operation" for 32x32 CIFAR-10 images.
//!
//! Parameter names equal torchvision's (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`, ...; no `fc`), and initialisation follows torchvision:
//! Kaiming-normal (fan-out, ReLU) convolutions, batch-norm weight 1 and bias 0.
//!
//! # Shapes
//! input `[B, 3, S, S]` f32 -> representation h `[B, out_dim]`, with
//! `out_dim = 512·width` (basic blocks, ResNet-18/34) or `2048·width` (bottlenecks, 50/101/152).
use super::norm::BatchNorm;
use super::{Arch, ModelConfig, Stem};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A 2-D convolution without bias (every one is followed by batch norm), torchvision's init.
fn conv2d(p: nn::Path, c_in: i64, c_out: i64, ksize: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: ksize / 2,
        bias: false,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, ksize, cfg)
}

fn batch_norm(p: nn::Path, channels: i64) -> BatchNorm {
    let cfg = nn::BatchNormConfig::default();
    BatchNorm::new(nn::batch_norm2d(p, channels, cfg), &cfg)
}

/// The 1x1 convolution + BN that matches the shortcut's shape to the block's output.
#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
    bn: BatchNorm,
}

/// One residual block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with expansion 4).
#[derive(Debug)]
struct Block {
    convs: Vec<nn::Conv2D>,
    bns: Vec<BatchNorm>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(p: nn::Path, c_in: i64, planes: i64, stride: i64, bottleneck: bool) -> Block {
        let (kernels, widths): (Vec<i64>, Vec<i64>) = if bottleneck {
            (vec![1, 3, 1], vec![planes, planes, planes * 4])
        } else {
            (vec![3, 3], vec![planes, planes])
        };
        let c_out = *widths.last().expect("a block has convolutions");
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        let mut c = c_in;
        // The strided convolution: the first 3x3 (torchvision's ResNet v1.5 puts it there).
        let strided = if bottleneck { 1 } else { 0 };
        for (i, (&k, &w)) in kernels.iter().zip(&widths).enumerate() {
            let s = if i == strided { stride } else { 1 };
            convs.push(conv2d(&p / format!("conv{}", i + 1), c, w, k, s));
            bns.push(batch_norm(&p / format!("bn{}", i + 1), w));
            c = w;
        }
        let downsample = (stride != 1 || c_in != c_out).then(|| Downsample {
            conv: conv2d(&p / "downsample" / "0", c_in, c_out, 1, stride),
            bn: batch_norm(&p / "downsample" / "1", c_out),
        });
        Block {
            convs,
            bns,
            downsample,
        }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            ys = ys.apply(conv).apply_t(bn, train);
            if i < last {
                ys = ys.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => xs.apply(&d.conv).apply_t(&d.bn, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// ImageNet's per-channel mean of RGB in [0, 1] (torchvision's `Normalize` constants).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation of RGB in [0, 1].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A headless ResNet: the encoder f that maps an image to its representation h.
#[derive(Debug)]
pub struct ResNet {
    /// Channel mean and std `[1, 3, 1, 1]` to standardise the input with, if configured.
    input_norm: Option<(Tensor, Tensor)>,
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    max_pool: bool,
    layers: Vec<Vec<Block>>,
    out_dim: i64,
}

impl ResNet {
    /// Builds the encoder under `p` (torchvision names below it) for `image_size` inputs.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, image_size: usize) -> ResNet {
        let (blocks, bottleneck) = match cfg.arch {
            Arch::Resnet18 => ([2, 2, 2, 2], false),
            Arch::Resnet34 => ([3, 4, 6, 3], false),
            Arch::Resnet50 => ([3, 4, 6, 3], true),
            Arch::Resnet101 => ([3, 4, 23, 3], true),
            Arch::Resnet152 => ([3, 8, 36, 3], true),
        };
        let base = cfg.base_channels();
        let cifar_stem = match cfg.stem {
            Stem::Cifar => true,
            Stem::Imagenet => false,
            Stem::Auto => image_size <= 32,
        };
        let conv1 = if cifar_stem {
            conv2d(p / "conv1", 3, base, 3, 1)
        } else {
            conv2d(p / "conv1", 3, base, 7, 2)
        };
        let bn1 = batch_norm(p / "bn1", base);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = base;
        let mut layers = Vec::new();
        for (i, &count) in blocks.iter().enumerate() {
            let planes = base << i;
            let stride = if i == 0 { 1 } else { 2 };
            let lp = p / format!("layer{}", i + 1);
            let layer = (0..count)
                .map(|b| {
                    let block = Block::new(
                        &lp / b,
                        c_in,
                        planes,
                        if b == 0 { stride } else { 1 },
                        bottleneck,
                    );
                    c_in = planes * expansion;
                    block
                })
                .collect();
            layers.push(layer);
        }
        let input_norm = cfg.normalize_input.then(|| {
            let channels = |v: [f32; 3]| {
                Tensor::from_slice(&v)
                    .view([1, 3, 1, 1])
                    .to_device(p.device())
            };
            (channels(IMAGENET_MEAN), channels(IMAGENET_STD))
        });
        ResNet {
            input_norm,
            conv1,
            bn1,
            max_pool: !cifar_stem,
            layers,
            out_dim: c_in,
        }
    }

    /// Width of the representation h.
    pub fn out_dim(&self) -> i64 {
        self.out_dim
    }

    /// Every batch-norm layer (to synchronize them across ranks).
    pub fn batch_norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        let blocks = self.layers.iter_mut().flatten().flat_map(|block| {
            let downsample = block.downsample.as_mut().map(|d| &mut d.bn);
            block.bns.iter_mut().chain(downsample)
        });
        std::iter::once(&mut self.bn1).chain(blocks)
    }
}

impl ModuleT for ResNet {
    /// `[B, 3, S, S]` -> h `[B, out_dim]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let normalized;
        let xs = match &self.input_norm {
            Some((mean, std)) => {
                normalized = (xs - mean) / std;
                &normalized
            }
            None => xs,
        };
        let mut ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        if self.max_pool {
            ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in self.layers.iter().flatten() {
            ys = ys.apply_t(block, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1) // [B, out_dim]
    }
}
