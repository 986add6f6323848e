//! Decoding image files (JPEG, PNG) into u8 RGB, whatever their colour mode: grayscale,
//! grayscale+alpha, RGBA, 16-bit and CMYK JPEGs all come out as 8-bit RGB (alpha dropped, as
//! PIL's `convert("RGB")` does for torchvision's `ImageFolder`).
//!
//! A file's header is read before its pixels: an image whose header claims more than
//! [`MAX_IMAGE_PIXELS`] is refused before anything is allocated for it (a decompression bomb
//! is a few kilobytes of PNG that would need gigabytes decoded).

use std::io::Cursor;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// Largest accepted image, in pixels: PIL's own decompression-bomb limit
/// (`Image.MAX_IMAGE_PIXELS`, about 89 megapixels, e.g. 10,000 x 8,900).
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// A decoded image: u8 RGB, HWC.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    pub pixels: Vec<u8>,
    pub height: usize,
    pub width: usize,
}

/// Reads and decodes the image file at `path`; errors name the file and what is wrong with it.
pub fn read_rgb(path: &Path) -> Result<Rgb> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes).with_context(|| format!("decoding {}", path.display()))
}

/// Decodes an encoded image (format guessed from its first bytes) to RGB, refusing images over
/// [`MAX_IMAGE_PIXELS`] before decoding their pixels.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb> {
    ensure!(!bytes.is_empty(), "empty file");
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the header")?;
    ensure!(
        reader.format().is_some(),
        "not a JPEG or PNG image (unrecognised header)"
    );
    // The header is read once; the size check comes before any pixel buffer exists.
    reader.no_limits();
    let mut decoder = reader.into_decoder().context("reading the image size")?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    ensure!(
        pixels <= MAX_IMAGE_PIXELS,
        "{w}x{h} image has {pixels} pixels, above the limit of {MAX_IMAGE_PIXELS} (a decompression bomb?)"
    );
    ensure!(pixels > 0, "{w}x{h} image has no pixels");
    let mut limits = Limits::default();
    // Room for the decoder's own buffers at 16 bits x 4 channels, no more.
    limits.max_alloc = Some(pixels * 8 + (1 << 20));
    decoder
        .set_limits(limits)
        .context("setting decoder limits")?;
    let rgb = DynamicImage::from_decoder(decoder)
        .context("decoding the pixels")?
        .into_rgb8();
    Ok(Rgb {
        height: rgb.height() as usize,
        width: rgb.width() as usize,
        pixels: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgba};

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn every_png_mode_becomes_rgb() {
        let gray = ImageBuffer::from_fn(3, 2, |x, _| Luma([x as u8 * 100]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png)).unwrap();
        assert_eq!((rgb.height, rgb.width), (2, 3));
        assert_eq!(&rgb.pixels[3..6], &[100, 100, 100]);
        let rgba = ImageBuffer::from_fn(2, 2, |_, _| Rgba([10u8, 20, 30, 0]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png)).unwrap();
        assert_eq!(
            &rgb.pixels[..3],
            &[10, 20, 30],
            "alpha is dropped, not blended"
        );
        let wide = ImageBuffer::from_fn(2, 1, |_, _| Luma([65535u16]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageLuma16(wide), ImageFormat::Png)).unwrap();
        assert_eq!(&rgb.pixels[..3], &[255, 255, 255]);
        let la = ImageBuffer::from_fn(1, 1, |_, _| LumaA([7u8, 9]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageLumaA8(la), ImageFormat::Png)).unwrap();
        assert_eq!(rgb.pixels, [7, 7, 7]);
    }

    #[test]
    fn jpeg_decodes_close_to_its_source() {
        let img = ImageBuffer::from_fn(16, 16, |_, _| image::Rgb([200u8, 100, 50]));
        let rgb = decode_rgb(&encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)).unwrap();
        assert_eq!(rgb.pixels.len(), 16 * 16 * 3);
        for (got, want) in rgb.pixels.iter().zip([200u8, 100, 50].iter().cycle()) {
            assert!(got.abs_diff(*want) <= 3, "{got} vs {want}");
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(decode_rgb(b"").unwrap_err().to_string().contains("empty"));
        let err = decode_rgb(b"hello, not an image").unwrap_err();
        assert!(format!("{err:#}").contains("not a JPEG or PNG"), "{err:#}");
        let png = encode(
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(8, 8, |x, y| {
                image::Rgb([x as u8 * 30, y as u8 * 30, 0])
            })),
            ImageFormat::Png,
        );
        for cut in [png.len() / 2, png.len() - 13, 40] {
            assert!(decode_rgb(&png[..cut]).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn a_huge_header_is_refused_before_decoding() {
        // A valid PNG claiming 100000 x 100000 pixels in its header, with a few bytes of data.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend((data.len() as u32).to_be_bytes());
            let body = [kind, data].concat();
            png.extend(&body);
            png.extend(crc32fast::hash(&body).to_be_bytes());
        };
        let side = 100_000u32.to_be_bytes();
        chunk(b"IHDR", &[&side[..], &side[..], &[8, 2, 0, 0, 0]].concat());
        chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(b"IEND", &[]);
        let err = format!("{:#}", decode_rgb(&png).unwrap_err());
        assert!(
            err.contains("100000x100000") && err.contains("limit"),
            "{err}"
        );
    }
}
