//! What a user or vhost name, and a certificate identity, may contain: printable text. Control
//! characters (C0 and C1) could forge log lines or table rows, and Unicode format characters
//! (bidirectional overrides such as U+202E, zero-width characters) and the line and paragraph
//! separators make one name look like another in logs, listings and the audit log (PROBE F9, F12).

/// Longest name accepted (RabbitMQ names are short strings).
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// Unicode general category Cf (format characters), Zl and Zp, as of Unicode 15.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// A control character, a format character, or a line or paragraph separator.
pub fn is_invisible(c: char) -> bool {
    let code = u32::from(c);
    c.is_control()
        || INVISIBLE
            .iter()
            .any(|&(low, high)| (low..=high).contains(&code))
}

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("it contains a control or invisible formatting character")]
    Invisible,
}

/// Checks a user or vhost name, or a certificate identity.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    if name.chars().any(is_invisible) {
        return Err(NameError::Invisible);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_names_only() {
        for ok in [
            "nova",
            "nova-compute01",
            "/",
            "a/b",
            "%2F",
            "x y",
            "café",
            "名前",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "ev\u{202e}il",
            "a\u{2028}b",
            "a\u{2029}b",
            "zero\u{200b}width",
            "\u{feff}bom",
            "a\nb",
            "a\0b",
            "esc\u{1b}",
            "c1\u{85}",
            "tag\u{e0041}",
        ] {
            assert_eq!(check(bad), Err(NameError::Invisible), "{bad:?}");
        }
        assert_eq!(check(""), Err(NameError::Empty));
        assert_eq!(check(&"x".repeat(256)), Err(NameError::TooLong));
    }
}
