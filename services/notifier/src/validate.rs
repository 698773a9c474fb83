//! Input validation for people and channels. Rejects what would bounce or never ring, with a
//! message that names the field; it does not try to prove a mailbox exists.

use crate::error::{NotifierError, Result};

/// The languages every template exists in; anything else falls back to English.
pub const LANGUAGES: [&str; 3] = ["en", "ja", "fr"];

/// A practical subset of RFC 5321/5322: one `@`, a dot-atom local part and a domain of
/// letter-digit-hyphen labels (internationalised labels are accepted as UTF-8).
pub fn email(field: &str, value: &str) -> Result<()> {
    let bad = |why: &str| Err(NotifierError::invalid(format!("{field}: {why}")));
    if value.is_empty() {
        return bad("is required");
    }
    if value.len() > 254 {
        return bad("is longer than 254 characters");
    }
    let Some((local, domain)) = value.rsplit_once('@') else {
        return bad("is not an email address");
    };
    if local.is_empty() || local.len() > 64 {
        return bad("has an invalid local part");
    }
    let atom_char = |c: char| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    if local
        .split('.')
        .any(|atom| atom.is_empty() || !atom.chars().all(atom_char))
    {
        return bad("has an invalid local part");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return bad("needs a fully qualified domain");
    }
    for label in &labels {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_alphanumeric() || c == '-')
        {
            return bad("has an invalid domain");
        }
    }
    Ok(())
}

/// E.164: a plus sign, a non-zero country-code digit, at most 15 digits in all.
pub fn e164(field: &str, value: &str) -> Result<()> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let ok = (8..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(NotifierError::invalid(format!(
            "{field}: must be an E.164 number such as +81312345678"
        )))
    }
}

/// An empty language means "use the partner default"; otherwise a BCP 47 tag whose primary
/// subtag we keep (so "fr-CA" renders French).
pub fn language(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.split('-').all(|part| {
            !part.is_empty() && part.len() <= 8 && part.chars().all(|c| c.is_ascii_alphanumeric())
        })
    {
        Ok(())
    } else {
        Err(NotifierError::invalid(format!(
            "{field}: must be a BCP 47 language tag such as \"ja\" or \"fr-CA\""
        )))
    }
}

pub fn time_zone(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.parse::<chrono_tz::Tz>().is_ok() {
        Ok(())
    } else {
        Err(NotifierError::invalid(format!(
            "{field}: must be an IANA time zone such as \"Asia/Tokyo\""
        )))
    }
}

pub fn required(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(NotifierError::invalid(format!("{field}: is required")))
    } else if value.len() > 256 {
        Err(NotifierError::invalid(format!(
            "{field}: is longer than 256 characters"
        )))
    } else {
        Ok(())
    }
}

/// The template language for a recipient: its own, else the partner's, else English.
pub fn pick_language(preferred: &str, fallback: &str) -> &'static str {
    for tag in [preferred, fallback] {
        let primary = tag
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if let Some(lang) = LANGUAGES.iter().find(|l| **l == primary) {
            return lang;
        }
    }
    "en"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "soc@contoso.com",
            "security-team+alerts@mail.contoso.co.jp",
            "a.b@x.fr",
        ] {
            email("email", ok).unwrap();
        }
        for bad in [
            "",
            "no-at",
            "a@b",
            "a..b@x.com",
            ".a@x.com",
            "a@-x.com",
            "a@x..com",
            "a b@x.com",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        e164("phone", "+81312345678").unwrap();
        e164("phone", "+14155550100").unwrap();
        for bad in [
            "",
            "0312345678",
            "+0312345678",
            "+1 415 555 0100",
            "+1234567890123456",
            "+1234",
        ] {
            assert!(e164("phone", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn languages_and_zones() {
        language("language", "fr-CA").unwrap();
        assert!(language("language", "fr CA").is_err());
        time_zone("time_zone", "Asia/Tokyo").unwrap();
        assert!(time_zone("time_zone", "Mars/Olympus").is_err());
        assert_eq!(pick_language("ja-JP", "fr"), "ja");
        assert_eq!(pick_language("de", "fr"), "fr");
        assert_eq!(pick_language("", "de"), "en");
    }
}
