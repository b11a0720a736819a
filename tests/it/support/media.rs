//! Small but real sticker files, which a browser decodes and plays: the
//! gallery's tests look at them in chromium.

use std::io::Write;

/// A lossless (VP8L) WEBP of one solid colour, `size`×`size` pixels: every
/// prefix code has a single symbol, so the image is its header and five codes.
pub fn webp(size: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut bits = BitWriter::default();
    bits.put(0x2F, 8); // VP8L signature
    bits.put(size - 1, 14);
    bits.put(size - 1, 14);
    bits.put(u32::from(rgba[3] != 255), 1); // alpha hint
    bits.put(0, 3); // version
    bits.put(0, 1); // no transform
    bits.put(0, 1); // no colour cache
    bits.put(0, 1); // no meta prefix codes
    for symbol in [rgba[1], rgba[0], rgba[2], rgba[3]] {
        bits.put(1, 1); // simple code
        bits.put(0, 1); // one symbol
        bits.put(1, 1); // 8-bit symbol
        bits.put(u32::from(symbol), 8);
    }
    bits.put(0b0001, 4); // distance code: simple, one 1-bit symbol, 0
    let mut data = bits.bytes;
    if bits.used > 0 {
        data.push(bits.current);
    }
    let mut chunk = b"VP8L".to_vec();
    chunk.extend_from_slice(&(data.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&data);
    if data.len() % 2 == 1 {
        chunk.push(0);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunk);
    out
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    current: u8,
    used: u32,
}

impl BitWriter {
    /// LSB first, as VP8L wants.
    fn put(&mut self, value: u32, n: u32) {
        for i in 0..n {
            self.current |= (((value >> i) & 1) as u8) << self.used;
            self.used += 1;
            if self.used == 8 {
                self.bytes.push(self.current);
                self.current = 0;
                self.used = 0;
            }
        }
    }
}

/// An RGBA PNG with a diagonal pattern on a transparent background (a
/// cleaned pack sheet, say).
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            if (x + y) % 5 == 0 {
                raw.extend_from_slice(&[0, 0, 0, 0]);
            } else {
                raw.extend_from_slice(&[
                    seed.wrapping_mul(37).wrapping_add((x * 4) as u8),
                    seed.wrapping_mul(91).wrapping_add((y * 4) as u8),
                    seed.wrapping_mul(53),
                    255,
                ]);
            }
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&raw).expect("compress");
    let idat = z.finish().expect("compress");
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, body) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &idat), (b"IEND", &[])] {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(body);
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    out
}

/// A 1×1 grey baseline JPEG; `label` (in a comment) makes its bytes distinct.
pub fn jpeg(label: &str) -> Vec<u8> {
    fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let one_code: Vec<u8> = std::iter::once(1).chain([0; 15]).collect();
    let mut out = vec![0xFF, 0xD8];
    segment(
        &mut out,
        0xE0,
        b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    );
    segment(&mut out, 0xFE, label.as_bytes());
    segment(&mut out, 0xDB, &[&[0u8][..], &[1; 64]].concat());
    segment(&mut out, 0xC0, b"\x08\x00\x01\x00\x01\x01\x01\x11\x00");
    segment(&mut out, 0xC4, &[&[0x00][..], &one_code, &[0]].concat());
    segment(&mut out, 0xC4, &[&[0x10][..], &one_code, &[0]].concat());
    segment(&mut out, 0xDA, b"\x01\x01\x00\x00\x3f\x00");
    out.extend_from_slice(&[0x3F, 0xFF, 0xD9]);
    out
}

/// An animated sticker: gzipped Lottie JSON of one rounded rectangle of
/// colour `rgb` (0..1) turning once a second.
pub fn tgs(name: &str, rgb: [f64; 3]) -> Vec<u8> {
    let lottie = serde_json::json!({
        "tgs": 1, "v": "5.5.2", "fr": 30, "ip": 0, "op": 30, "w": 512, "h": 512,
        "nm": name, "ddd": 0, "assets": [],
        "layers": [{
            "ddd": 0, "ind": 1, "ty": 4, "nm": "shape", "sr": 1, "ao": 0,
            "ip": 0, "op": 30, "st": 0, "bm": 0,
            "ks": {
                "o": {"a": 0, "k": 100},
                "r": {"a": 1, "k": [
                    {"t": 0, "s": [0], "e": [360],
                     "i": {"x": [0.5], "y": [0.5]}, "o": {"x": [0.5], "y": [0.5]}},
                    {"t": 30, "s": [360]}
                ]},
                "p": {"a": 0, "k": [256, 256, 0]},
                "a": {"a": 0, "k": [0, 0, 0]},
                "s": {"a": 0, "k": [100, 100, 100]}
            },
            "shapes": [{
                "ty": "gr", "nm": "group",
                "it": [
                    {"ty": "rc", "nm": "box", "d": 1,
                     "s": {"a": 0, "k": [320, 200]}, "p": {"a": 0, "k": [0, 0]},
                     "r": {"a": 0, "k": 48}},
                    {"ty": "fl", "nm": "fill", "c": {"a": 0, "k": [rgb[0], rgb[1], rgb[2], 1]},
                     "o": {"a": 0, "k": 100}, "r": 1},
                    {"ty": "tr", "p": {"a": 0, "k": [0, 0]}, "a": {"a": 0, "k": [0, 0]},
                     "s": {"a": 0, "k": [100, 100]}, "r": {"a": 0, "k": 0},
                     "o": {"a": 0, "k": 100}}
                ]
            }]
        }]
    });
    gzip(lottie.to_string().as_bytes())
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).expect("gzip");
    z.finish().expect("gzip")
}

/// A one-second VP9 video sticker (64×64, alpha), recorded by chromium
/// (`tests/browser/make-webm.mjs`).
pub fn webm() -> Vec<u8> {
    include_bytes!("../../browser/fixtures/sticker.webm").to_vec()
}
