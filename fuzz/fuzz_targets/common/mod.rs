//! Helpers shared by the fuzz targets: strings biased towards the characters each grammar
//! treats specially, so that mutations reach the interesting branches quickly.
#![allow(dead_code)]

use arbitrary::{Result, Unstructured};

/// Pieces that matter to the template, `$VAR` and XML grammars.
const TRICKY: &[&str] = &[
    "\"", "\\", "\\\"", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\0", "\x01", "$", "$A", "[", "]",
    "]]>", ",", "=", "#", "<", ">", "&", "&amp;", "'", "'\\''", "@^_^@", "a", "A", "z", "Z", "0",
    "9", "_", "é", "\u{fffe}", "\u{ffff}", "\u{85}", "\u{2028}", "xml", "XML", "-", ".", "(x", ")",
    "+", "*", "{node}",
];

/// A string made of [`TRICKY`] pieces and arbitrary chars.
pub fn tricky(u: &mut Unstructured<'_>, max_pieces: usize) -> Result<String> {
    let n = u.int_in_range(0..=max_pieces)?;
    let mut s = String::new();
    for _ in 0..n {
        if u.ratio(1, 5)? {
            s.push(u.arbitrary::<char>()?);
        } else {
            s.push_str(u.choose(TRICKY)?);
        }
    }
    Ok(s)
}

/// Either an arbitrary string or a [`tricky`] one.
pub fn any_string(u: &mut Unstructured<'_>) -> Result<String> {
    if u.arbitrary::<bool>()? {
        u.arbitrary::<String>()
    } else {
        tricky(u, 24)
    }
}

/// A name drawn mostly from `[A-Za-z0-9_]`, upper case most of the time.
pub fn name(u: &mut Unstructured<'_>) -> Result<String> {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
    const ANY: &[u8] = b"ABCXYZabcxyzLM0123456789_";
    match u.int_in_range(0u8..=9)? {
        0 => any_string(u),
        1 => {
            let n = u.int_in_range(1..=8)?;
            (0..n).map(|_| Ok(*u.choose(ANY)? as char)).collect()
        }
        2 => Ok(format!("XML{}", u.int_in_range(0u8..=9)?)),
        _ => {
            let n = u.int_in_range(1..=8)?;
            let mut s = String::new();
            for i in 0..n {
                let c = *u.choose(UPPER)? as char;
                // Mostly a letter first, so most names are representable.
                s.push(if i == 0 && c.is_ascii_digit() && u.ratio(3, 4)? {
                    'N'
                } else {
                    c
                });
            }
            Ok(s)
        }
    }
}

/// Lossless view of fuzz bytes as text for parsers that take `&str`.
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
