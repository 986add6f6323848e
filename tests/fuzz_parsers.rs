//! Property tests (proptest, a bounded number of cases so CI time stays fixed) of everything
//! that parses user input: the configuration file, the `--data` spec, image files, and the
//! CIFAR and STL-10 binary readers. Whatever the input, each must return a value or an error,
//! never panic; and what they accept must be usable (every image of an accepted dataset reads).
use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};
use proptest::prelude::*;
use simclr::config::Config;
use simclr::data::{cifar, decode, stl10, DataSpec};

/// A valid PNG and JPEG to mutate.
fn encoded(format: ImageFormat) -> Vec<u8> {
    let img = ImageBuffer::from_fn(24, 16, |x, y| Rgb([x as u8 * 10, y as u8 * 15, 128]));
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// JSON values of every kind, nested a little.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e12f64..1e12).prop_map(serde_json::Value::from),
        prop_oneof![Just(0.0), Just(-1.0), Just(1e308), Just(5e-324)]
            .prop_map(serde_json::Value::from),
        "[a-z0-9:/._-]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop::collection::vec(inner, 0..3).prop_map(serde_json::Value::from)
    })
}

/// Every (section, key) of the default configuration.
fn config_keys() -> Vec<(String, String)> {
    let default = serde_json::to_value(Config::default()).unwrap();
    let mut keys = Vec::new();
    for (section, fields) in default.as_object().unwrap() {
        for key in fields
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_else(Vec::new)
        {
            keys.push((section.clone(), key));
        }
    }
    keys
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_text_never_panics(text in "\\PC{0,80}") {
        if let Ok(cfg) = Config::parse(&text, "fuzz") {
            let _ = cfg.validate();
        }
    }

    #[test]
    fn configs_with_random_values_for_real_keys_never_panic(
        picks in prop::collection::vec((any::<prop::sample::Index>(), json_value()), 1..6)
    ) {
        let keys = config_keys();
        let mut root = serde_json::Map::new();
        for (index, value) in picks {
            let (section, key) = index.get(&keys);
            let entry = root.entry(section.clone()).or_insert_with(|| serde_json::json!({}));
            entry[key] = value;
        }
        let text = serde_json::Value::Object(root).to_string();
        if let Ok(cfg) = Config::parse(&text, "fuzz") {
            let _ = cfg.validate();
        }
    }

    #[test]
    fn data_specs_never_panic(text in "(synthetic|cifar10|cifar100|stl10|folder)?:?\\PC{0,20}") {
        if let Ok(spec) = text.parse::<DataSpec>() {
            prop_assert_eq!(spec.to_string().parse::<DataSpec>().ok(), Some(spec));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode::decode_rgb(&bytes);
    }

    #[test]
    fn mutated_png_and_jpeg_files_never_panic_the_decoder(
        jpeg in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        keep in 0.0f64..=1.0,
    ) {
        let mut bytes = encoded(if jpeg { ImageFormat::Jpeg } else { ImageFormat::Png });
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate((bytes.len() as f64 * keep) as usize);
        if let Ok(rgb) = decode::decode_rgb(&bytes) {
            prop_assert_eq!(rgb.pixels.len(), rgb.height * rgb.width * 3);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cifar_files_of_any_size_and_content_never_panic(
        records in 0usize..4,
        extra in 0usize..3,
        fill in any::<u8>(),
        hundred in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (variant, record, files) = if hundred {
            (cifar::Variant::Cifar100, 3074, vec!["train.bin", "test.bin"])
        } else {
            (cifar::Variant::Cifar10, 3073, vec!["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"])
        };
        for file in files {
            std::fs::write(dir.path().join(file), vec![fill; records * record + extra]).unwrap();
        }
        if let Ok(splits) = cifar::load(variant, dir.path()) {
            for set in [&splits.train, &splits.test] {
                for i in 0..set.len() {
                    prop_assert!(set.image(i).is_ok());
                    prop_assert!(set.label(i) >= 0);
                }
            }
        }
    }

    #[test]
    fn stl10_files_of_any_size_and_content_never_panic(
        images in 0usize..3,
        extra in prop::sample::select(vec![0usize, 1, 9216]),
        labels in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let x = vec![7u8; images * 96 * 96 * 3 + extra];
        for name in ["train", "test"] {
            std::fs::write(dir.path().join(format!("{name}_X.bin")), &x).unwrap();
            std::fs::write(dir.path().join(format!("{name}_y.bin")), &labels).unwrap();
        }
        if let Ok(splits) = stl10::load(dir.path()) {
            for i in 0..splits.train.len() {
                prop_assert!(splits.train.image(i).is_ok());
                prop_assert!((0..10).contains(&splits.train.label(i)));
            }
        }
    }
}
