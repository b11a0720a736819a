//! Keys: which destination key a ref gets (SPEC §5) and which keys are safe.

/// Refuses a key that could leave a store's root or confuse a store: empty,
/// absolute, with empty, `.` or `..` segments, backslashes or control bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(|c| c.is_control())
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(format!("unsafe key {key:?}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/\0b",
            "a\\..\\b",
            "a/",
        ] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
        assert!(check_key("stickers/1/2/3.webp").is_ok());
        assert!(check_key("stickers/1/x..y.webp").is_ok());
    }
}
