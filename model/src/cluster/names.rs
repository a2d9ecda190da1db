//! Kubernetes naming rules (REG-1): DNS-1035 and DNS-1123 labels and
//! subdomains, label keys and values.

use super::{Error, Result};

fn invalid(what: &'static str, value: &str, reason: &'static str) -> Error {
    let value: String = value.chars().take(80).collect();
    Error::InvalidName {
        what,
        value,
        reason,
    }
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: at most 63 characters of `[a-z0-9-]`, starting and
/// ending with an alphanumeric. Namespaces, Pod hostnames.
pub fn validate_dns1123_label(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(what, value, "must not be empty"));
    }
    if value.len() > 63 {
        return Err(invalid(what, value, "must be at most 63 characters"));
    }
    if !value.chars().all(|c| is_lower_alnum(c) || c == '-') {
        return Err(invalid(
            what,
            value,
            "must consist of lower-case alphanumerics and '-'",
        ));
    }
    if !value.starts_with(is_lower_alnum) || !value.ends_with(is_lower_alnum) {
        return Err(invalid(
            what,
            value,
            "must start and end with an alphanumeric",
        ));
    }
    Ok(())
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter. Service names.
pub fn validate_dns1035_label(what: &'static str, value: &str) -> Result<()> {
    validate_dns1123_label(what, value)?;
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(what, value, "must start with a letter"));
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
/// Pod and EndpointSlice names.
pub fn validate_dns1123_subdomain(what: &'static str, value: &str) -> Result<()> {
    if value.len() > 253 {
        return Err(invalid(what, value, "must be at most 253 characters"));
    }
    for part in value.split('.') {
        validate_dns1123_label(what, part)?;
    }
    Ok(())
}

fn validate_qualified_part(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(what, value, "name part must be 1 to 63 characters"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !value.chars().all(ok) {
        return Err(invalid(
            what,
            value,
            "must consist of alphanumerics, '-', '_' or '.'",
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !value.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(invalid(
            what,
            value,
            "must start and end with an alphanumeric",
        ));
    }
    Ok(())
}

/// A label key: an optional DNS-1123 subdomain prefix and `/`, then a name of
/// at most 63 characters.
pub fn validate_label_key(value: &str) -> Result<()> {
    match value.split_once('/') {
        Some((prefix, name)) => {
            validate_dns1123_subdomain("label key prefix", prefix)?;
            validate_qualified_part("label key", name)
        }
        None => validate_qualified_part("label key", value),
    }
}

/// A label value: empty, or at most 63 characters shaped like a label key name.
pub fn validate_label_value(value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    validate_qualified_part("label value", value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_dns1035() {
        assert!(validate_dns1035_label("Service name", "voy").is_ok());
        assert!(validate_dns1035_label("Service name", "1voy").is_err());
        assert!(validate_dns1035_label("Service name", "Voy").is_err());
        assert!(validate_dns1035_label("Service name", "voy-").is_err());
        assert!(validate_dns1035_label("Service name", &"a".repeat(63)).is_ok());
        let long = validate_dns1035_label("Service name", &"a".repeat(64)).unwrap_err();
        assert!(long.is_invalid_name());
        assert!(long.to_string().contains("63"));
    }

    #[test]
    fn subdomains_and_labels() {
        assert!(validate_dns1123_subdomain("Pod name", "web-0.x").is_ok());
        assert!(validate_dns1123_subdomain("Pod name", &"a.".repeat(127)).is_err());
        assert!(validate_label_key("app.kubernetes.io/name").is_ok());
        assert!(validate_label_key("app/").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1.2_3").is_ok());
        assert!(validate_label_value("-v").is_err());
        assert!(validate_label_value(&"v".repeat(64)).is_err());
    }
}
