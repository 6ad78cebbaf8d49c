//! Reading QR codes back, for the tests of the deals' codes: a PNG of any
//! colour type (the server's image, a browser's screenshot) to grey, then
//! `rqrr`, a decoder independent of the `qrcode` crate the server draws
//! with.

/// The text of every QR code found in the PNG `bytes`, in the order the
/// decoder finds them; a code that does not decode is left out. Panics
/// (a test helper) when `bytes` is not a PNG.
pub fn decode_png(bytes: &[u8]) -> Vec<String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palette and 16-bit images become 8-bit samples.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a bounded image")];
    let frame = reader.next_frame(&mut pixels).expect("a PNG frame");
    let (width, height) = (frame.width as usize, frame.height as usize);
    let channels = frame.color_type.samples();
    let line = frame.line_size;
    let grey = |x: usize, y: usize| -> u8 {
        let at = y * line + x * channels;
        match frame.color_type {
            png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => pixels[at],
            _ => {
                let sum =
                    u32::from(pixels[at]) + u32::from(pixels[at + 1]) + u32::from(pixels[at + 2]);
                u8::try_from(sum / 3).unwrap_or(u8::MAX)
            }
        }
    };
    decode_grey(width, height, grey)
}

/// The text of every QR code in a `width` × `height` grey image whose
/// pixel at `(x, y)` is `grey(x, y)` (0 black, 255 white).
pub fn decode_grey(
    width: usize,
    height: usize,
    grey: impl FnMut(usize, usize) -> u8,
) -> Vec<String> {
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, grey);
    image
        .detect_grids()
        .into_iter()
        .filter_map(|grid| grid.decode().ok())
        .map(|(_meta, text)| text)
        .collect()
}
