//! A deal's QR code: the storefront's link to the deal (`<public URL>?deal=
//! d_1`), drawn as SVG or PNG for `GET /v1/deals/{id}/qr.svg` and
//! `qr.png`, so a shopper scans it at a till or a vending machine and
//! lands on the deal's card with its **Buy**.
//!
//! The encoding is the `qrcode` crate's (error correction level M, a quiet
//! zone of 4 modules); the SVG is its own renderer, the PNG is its modules
//! as 8-bit grey, encoded by the `png` crate. There is no size parameter:
//! a module is [`QR_MODULE_PIXELS`] pixels square in the PNG and units of
//! the same size in the SVG's `viewBox` (scalable). The link's length is
//! bounded ([`crate::config::PUBLIC_URL_BYTES_MAX`] plus a deal id), so the
//! code is at most version 11 (61 modules): the PNG is at most
//! `(61 + 8) × 8 = 552` pixels square.

use qrcode::render::{Canvas, Pixel, svg};
use qrcode::{Color, QrCode};
use url::Url;

use crate::error::Error;
use flashsale_engine::DealId;

/// Pixels per module, across and down, in the PNG (and units in the SVG).
pub const QR_MODULE_PIXELS: u32 = 8;

/// The storefront's link to `deal`: `public_url` with the query
/// `deal=<id>` (the storefront opens that deal's card).
pub(crate) fn deal_link(public_url: &Url, deal: DealId) -> Url {
    let mut link = public_url.clone();
    link.set_query(Some(&format!("deal={deal}")));
    link
}

fn encode(link: &Url) -> Result<QrCode, Error> {
    QrCode::new(link.as_str().as_bytes()).map_err(|error| Error::QrCode(error.to_string()))
}

/// The QR code of `link` as an SVG document (black on white).
pub(crate) fn svg(link: &Url) -> Result<String, Error> {
    Ok(encode(link)?
        .render::<svg::Color<'_>>()
        .module_dimensions(QR_MODULE_PIXELS, QR_MODULE_PIXELS)
        .build())
}

/// The QR code of `link` as a PNG (8-bit grey, black on white).
pub(crate) fn png(link: &Url) -> Result<Vec<u8>, Error> {
    let grey = encode(link)?
        .render::<Grey>()
        .module_dimensions(QR_MODULE_PIXELS, QR_MODULE_PIXELS)
        .build();
    let failed = |error: png::EncodingError| Error::QrCode(error.to_string());
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, grey.side, grey.side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&grey.pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(bytes)
}

/// One grey pixel: the `qrcode` renderer's pixel type for the PNG.
#[derive(Debug, Clone, Copy)]
struct Grey(u8);

/// A square image of [`Grey`] pixels, row by row.
struct GreyImage {
    side: u32,
    pixels: Vec<u8>,
}

/// The renderer's canvas: the image being drawn and the dark shade.
struct GreyCanvas {
    image: GreyImage,
    dark: u8,
}

impl Pixel for Grey {
    type Image = GreyImage;
    type Canvas = GreyCanvas;

    fn default_unit_size() -> (u32, u32) {
        (QR_MODULE_PIXELS, QR_MODULE_PIXELS)
    }

    fn default_color(color: Color) -> Grey {
        Grey(color.select(0, 255))
    }
}

impl Canvas for GreyCanvas {
    type Pixel = Grey;
    type Image = GreyImage;

    /// The renderer draws squares only (`width == height`).
    fn new(width: u32, height: u32, dark: Grey, light: Grey) -> GreyCanvas {
        let side = width.max(height);
        let area = usize::try_from(side).unwrap_or(0).pow(2);
        GreyCanvas {
            image: GreyImage {
                side,
                pixels: vec![light.0; area],
            },
            dark: dark.0,
        }
    }

    fn draw_dark_pixel(&mut self, x: u32, y: u32) {
        let side = self.image.side as usize;
        if let Some(pixel) = self.image.pixels.get_mut(y as usize * side + x as usize) {
            *pixel = self.dark;
        }
    }

    fn into_image(self) -> GreyImage {
        self.image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_keeps_the_public_path_and_names_the_deal() {
        let base = Url::parse("https://shop.example/flash/").unwrap();
        assert_eq!(
            deal_link(&base, DealId(7)).as_str(),
            "https://shop.example/flash/?deal=d_7"
        );
    }

    #[test]
    fn the_png_is_square_whole_modules_black_on_white() {
        let link = Url::parse("http://127.0.0.1:8080/?deal=d_1").unwrap();
        let bytes = png(&link).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!(info.width, info.height);
        assert_eq!(info.width % QR_MODULE_PIXELS, 0);
        // 31 bytes at level M: version 3 (29 modules), plus the quiet zone
        // of 4 on each side.
        assert_eq!(info.width, (29 + 8) * QR_MODULE_PIXELS);
        let svg = svg(&link).unwrap();
        assert!(svg.contains(r#"viewBox="0 0 296 296""#), "{svg}");
    }

    /// The longest public URL and the longest deal id make a code of
    /// version 11 at most: the PNG is at most 552 pixels square.
    #[test]
    fn the_longest_link_stays_within_the_documented_size() {
        let base = format!("https://shop.example/{}", "a".repeat(200 - 21));
        assert_eq!(base.len(), crate::config::PUBLIC_URL_BYTES_MAX);
        let link = deal_link(&Url::parse(&base).unwrap(), DealId(u64::MAX));
        let bytes = png(&link).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        assert_eq!(reader.info().width, (61 + 8) * QR_MODULE_PIXELS);
    }
}
