//! Every augmentation op against torchvision's functional op with the same parameters (crop
//! box, factors, order, kernel size, sigma) on photo-like images: the largest difference must
//! stay within 2/255. The reference is torchvision's tensor path on float images
//! (scripts/reference/torchvision_augment.py, which also makes the images); run with
//! `--nocapture` to see the measured agreement per op.
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use simclr::data::augment::{self, blur, BlurParams, JitterParams, ViewParams};
use simclr::data::resize::{resized_crop_into, CropBox, ResizeFilter};

/// Largest allowed difference, in 0..=255 levels.
const TOLERANCE: f32 = 2.0;

/// A photo-like image the reference script draws from its seed.
struct Photo {
    name: &'static str,
    seed: u64,
    height: usize,
    width: usize,
}

const PHOTOS: [Photo; 3] = [
    Photo {
        name: "landscape",
        seed: 1,
        height: 375,
        width: 500,
    },
    Photo {
        name: "portrait",
        seed: 2,
        height: 500,
        width: 375,
    },
    Photo {
        name: "small",
        seed: 3,
        height: 96,
        width: 128,
    },
];

/// One op with explicit parameters, as both sides run it.
#[derive(Debug)]
enum Op {
    ResizedCrop(CropBox, usize, ResizeFilter),
    Hflip,
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    Hue(f32),
    Grayscale,
    Blur(BlurParams),
    Eval(usize, f64, ResizeFilter),
    View(usize, ViewParams),
}

const JITTER_NAMES: [&str; 4] = ["brightness", "contrast", "saturation", "hue"];

fn filter_name(filter: ResizeFilter) -> &'static str {
    match filter {
        ResizeFilter::Bilinear => "bilinear",
        ResizeFilter::Bicubic => "bicubic",
    }
}

fn crop_json(c: &CropBox) -> Value {
    json!([c.top, c.left, c.height, c.width])
}

impl Op {
    /// The row of the agreement table this case counts in.
    fn family(&self) -> String {
        match self {
            Op::ResizedCrop(_, _, f) => format!("crop+resize ({})", filter_name(*f)),
            Op::Hflip => "flip".into(),
            Op::Brightness(_) => "brightness".into(),
            Op::Contrast(_) => "contrast".into(),
            Op::Saturation(_) => "saturation".into(),
            Op::Hue(_) => "hue".into(),
            Op::Grayscale => "grayscale".into(),
            Op::Blur(_) => "blur".into(),
            Op::Eval(_, _, f) => format!("eval transform ({})", filter_name(*f)),
            Op::View(..) => "whole view (u8)".into(),
        }
    }

    /// The case as the reference script reads it.
    fn to_json(&self) -> Value {
        match self {
            Op::ResizedCrop(crop, size, f) => {
                json!({"op": "resized_crop", "crop": crop_json(crop), "size": size, "filter": filter_name(*f)})
            }
            Op::Hflip => json!({"op": "hflip"}),
            Op::Brightness(x) => json!({"op": "brightness", "factor": x}),
            Op::Contrast(x) => json!({"op": "contrast", "factor": x}),
            Op::Saturation(x) => json!({"op": "saturation", "factor": x}),
            Op::Hue(x) => json!({"op": "hue", "factor": x}),
            Op::Grayscale => json!({"op": "grayscale"}),
            Op::Blur(b) => json!({"op": "blur", "kernel_size": b.kernel_size, "sigma": b.sigma}),
            Op::Eval(size, fraction, f) => {
                json!({"op": "eval", "size": size, "crop_fraction": fraction, "filter": filter_name(*f)})
            }
            Op::View(size, p) => json!({
                "op": "view",
                "size": size,
                "crop": crop_json(&p.crop),
                "filter": filter_name(p.filter),
                "flip": p.flip,
                "jitter": p.jitter.as_ref().map(|j| json!({
                    "order": j.order.map(|i| JITTER_NAMES[i]),
                    "brightness": j.brightness,
                    "contrast": j.contrast,
                    "saturation": j.saturation,
                    "hue": j.hue,
                })),
                "grayscale": p.grayscale,
                "blur": p.blur.as_ref().map(|b| json!({"kernel_size": b.kernel_size, "sigma": b.sigma})),
            }),
        }
    }

    /// Our output on the 0..=255 scale: f32 for single ops, the rounded u8 view for a view.
    fn run(&self, src: &[u8], (h, w): (usize, usize)) -> Vec<f32> {
        let mut img: Vec<f32> = src.iter().map(|&v| f32::from(v)).collect();
        match self {
            Op::ResizedCrop(crop, size, f) => resized_crop_into(
                src,
                (h, w),
                crop,
                (*size, *size),
                *f,
                &mut Vec::new(),
                &mut img,
            ),
            Op::Hflip => augment::hflip(&mut img, h, w),
            Op::Brightness(x) => augment::adjust_brightness(&mut img, *x),
            Op::Contrast(x) => augment::adjust_contrast(&mut img, *x),
            Op::Saturation(x) => augment::adjust_saturation(&mut img, *x),
            Op::Hue(x) => augment::adjust_hue(&mut img, *x),
            Op::Grayscale => augment::grayscale(&mut img),
            Op::Blur(b) => {
                blur::gaussian_blur(&mut img, (h, w), b.kernel_size, b.sigma, &mut Vec::new())
            }
            Op::Eval(size, fraction, f) => {
                let mut out = vec![0u8; size * size * 3];
                augment::eval_view(src, h, w, *size, *fraction, *f, &mut out);
                img = out.into_iter().map(f32::from).collect();
            }
            Op::View(size, p) => {
                let mut out = vec![0u8; size * size * 3];
                augment::apply_view(src, h, w, *size, p, &mut out);
                img = out.into_iter().map(f32::from).collect();
            }
        }
        img
    }
}

/// The cases of one photo: sampled and extreme crops with both filters, every jitter op at
/// the ends and inside of its range at strength 1, blurs at the official kernel sizes, the
/// evaluation transform, and whole views with parameters sampled at strength 1 (each op
/// forced on in some of them).
fn cases(photo: &Photo) -> Vec<Op> {
    let (h, w) = (photo.height, photo.width);
    let mut ops = Vec::new();
    for i in 0..3 {
        let mut rng = augment::sample_rng(photo.seed, 0, i, 0);
        let crop = augment::sample_crop_box(h, w, (0.08, 1.0), &mut rng);
        let filter = [ResizeFilter::Bilinear, ResizeFilter::Bicubic][i as usize % 2];
        ops.push(Op::ResizedCrop(crop, 224, filter));
    }
    let tiny = CropBox {
        top: h / 3,
        left: w / 4,
        height: 31,
        width: 40,
    };
    for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
        ops.push(Op::ResizedCrop(tiny, 224, filter)); // 7x upscaling
        ops.push(Op::ResizedCrop(CropBox::full(h, w), 32, filter)); // strong downscaling
    }
    ops.push(Op::Hflip);
    ops.push(Op::Grayscale);
    for x in [0.2, 0.65, 1.8] {
        ops.extend([Op::Brightness(x), Op::Contrast(x), Op::Saturation(x)]);
    }
    ops.push(Op::Saturation(0.0));
    for x in [-0.5, -0.2, 0.07, 0.2, 0.5] {
        ops.push(Op::Hue(x));
    }
    for (side, sigma) in [(224, 0.1), (224, 1.0), (224, 2.0), (96, 1.3)] {
        let kernel_size = blur::kernel_size(side);
        ops.push(Op::Blur(BlurParams { kernel_size, sigma }));
    }
    ops.push(Op::Eval(224.min(h.min(w)), 0.875, ResizeFilter::Bilinear));
    ops.push(Op::Eval(64, 0.875, ResizeFilter::Bicubic));
    ops.push(Op::Eval(32, 1.0, ResizeFilter::Bilinear));
    let cfg = augment::AugmentConfig {
        jitter_strength: 1.0,
        ..Default::default()
    };
    for i in 0..4u64 {
        let mut p = augment::sample_view(
            h,
            w,
            224,
            &cfg,
            &mut augment::sample_rng(7, photo.seed, i, 0),
        );
        p.filter = [ResizeFilter::Bilinear, ResizeFilter::Bicubic][i as usize % 2];
        if i < 2 {
            let mut rng = augment::sample_rng(8, photo.seed, i, 0);
            p.jitter = Some(augment::sample_jitter(1.0, &mut rng));
            p.blur = Some(BlurParams {
                kernel_size: 23,
                sigma: 0.5 + i as f64,
            });
        }
        p.grayscale = i == 3;
        ops.push(Op::View(224, p));
    }
    // A jitter whose order puts hue first and brightness last, at the range's ends.
    let mut p = augment::sample_view(
        h,
        w,
        224,
        &cfg,
        &mut augment::sample_rng(9, photo.seed, 0, 0),
    );
    p.jitter = Some(JitterParams {
        brightness: 1.8,
        contrast: 0.2,
        saturation: 1.8,
        hue: -0.2,
        order: [3, 2, 1, 0],
    });
    ops.push(Op::View(224, p));
    ops
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn every_op_agrees_with_torchvision_within_2_levels() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = Vec::new();
    let mut case_json = Vec::new();
    for photo in &PHOTOS {
        for (i, op) in cases(photo).into_iter().enumerate() {
            let name = format!("{}-{i}", photo.name);
            let mut spec = op.to_json();
            spec["name"] = json!(name);
            spec["image"] = json!(photo.name);
            case_json.push(spec);
            all.push((photo, name, op));
        }
    }
    let images: Vec<Value> = PHOTOS
        .iter()
        .map(|p| json!({"name": p.name, "seed": p.seed, "height": p.height, "width": p.width}))
        .collect();
    let spec = json!({"images": images, "cases": case_json});
    std::fs::write(dir.path().join("cases.json"), spec.to_string()).expect("cases.json");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/torchvision_augment.py");
    common::python_ok(&[script.as_os_str(), dir.path().as_os_str()]);

    // The largest difference per op family, and the case where it occurred.
    let mut worst: BTreeMap<String, (f32, String)> = BTreeMap::new();
    for (photo, name, op) in &all {
        let src = std::fs::read(dir.path().join(format!("{}.rgb", photo.name))).expect("image");
        assert_eq!(src.len(), photo.height * photo.width * 3);
        let ours = op.run(&src, (photo.height, photo.width));
        let reference = read_f32(&dir.path().join(format!("{name}.f32")));
        assert_eq!(ours.len(), reference.len(), "{name}: {op:?}");
        let diff = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let entry = worst.entry(op.family()).or_insert((0.0, String::new()));
        if diff >= entry.0 {
            *entry = (diff, format!("{name}: {op:?}"));
        }
    }
    eprintln!("largest difference from torchvision, in 1/255 levels:");
    for (family, (diff, _)) in &worst {
        eprintln!("  {family:<26} {diff:.4}");
    }
    let failures: Vec<String> = worst
        .values()
        .filter(|(diff, _)| *diff > TOLERANCE)
        .map(|(diff, case)| format!("{diff:.3} in {case}"))
        .collect();
    assert!(
        failures.is_empty(),
        "beyond 2/255:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        worst.len(),
        12,
        "every op family is covered: {:?}",
        worst.keys()
    );
}
