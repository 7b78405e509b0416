//! Kernel bytes are untrusted: comm, argv and paths can hold anything. They become strings
//! here, exactly (invalid UTF-8 bytes as `\xNN`; in what a process names itself, the backslash
//! too), and are made safe for a terminal separately.
use std::{borrow::Cow, fmt::Write as _};

/// A string from bytes, up to the first NUL when there is one.
pub fn from_cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    escape_invalid(&bytes[..end])
}

/// A string from bytes: valid UTF-8 as is, each invalid byte as the four characters `\xNN`.
pub fn escape_invalid(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A process's own words (its name, path and arguments), up to the first NUL: valid UTF-8 as
/// is, but each invalid byte and each backslash as `\xNN`, as systemd escapes, so that a byte
/// shown as `\xff` is never the four characters a process wrote (those read `\x5cxff`).
pub fn from_process_cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut out = String::with_capacity(end);
    for chunk in bytes[..end].utf8_chunks() {
        let valid = chunk.valid();
        if valid.contains('\\') {
            out.push_str(&valid.replace('\\', "\\x5c"));
        } else {
            out.push_str(valid);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The same text with control characters (C0, DEL, C1: terminal escape sequences start there)
/// written as `\xNN` or `\u{NN}`, so it cannot move the cursor or change colours.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) {
            if (c as u32) < 0x100 {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_stops_at_nul_and_escapes_invalid_bytes() {
        assert_eq!(from_cstr(b"abc\0def"), "abc");
        assert_eq!(from_cstr(b"a\xffb"), "a\\xffb");
        assert_eq!(from_cstr(b""), "");
        assert_eq!(from_cstr("ünï\0".as_bytes()), "ünï");
    }

    #[test]
    fn a_process_byte_and_a_process_backslash_are_told_apart() {
        assert_eq!(from_process_cstr(b"a\xffb\0c"), "a\\xffb");
        assert_eq!(from_process_cstr(b"a\\xffb"), "a\\x5cxffb");
        assert_eq!(from_process_cstr("ünï".as_bytes()), "ünï");
        assert_eq!(from_process_cstr(b"C:\\\xfe"), "C:\\x5c\\xfe");
    }

    #[test]
    fn a_string_filling_its_buffer_is_kept_whole() {
        assert_eq!(from_cstr(&[b'x'; 16]), "x".repeat(16));
    }

    #[test]
    fn terminal_text_has_no_control_characters() {
        let s = for_terminal("a\x1b[31mred\u{9b}\nz");
        assert_eq!(s, "a\\x1b[31mred\\x9b\\x0az");
        assert!(matches!(for_terminal("plain"), Cow::Borrowed(_)));
    }
}
