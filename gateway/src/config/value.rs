//! Value newtypes of the configuration: durations (`30s`, `8760h`), byte sizes (`64KiB`),
//! secrets (redacted whenever shown), and serde helpers that accept both native TOML values and
//! the strings that environment variables always are.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A duration written with a unit: `500ms`, `30s`, `5m`, `8760h`, `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(format!(
                "`{s}` is not a duration (write e.g. 30s, 5m, 8760h, 30d)"
            ));
        }
        let Some(&(_, millis)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "`{s}` has no valid unit (one of ms, s, m, h, d; e.g. 30s, 8760h)"
            ));
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is out of range"))?;
        let total = n
            .checked_mul(millis)
            .ok_or_else(|| format!("`{s}` is out of range"))?;
        Ok(Self(std::time::Duration::from_millis(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS {
            let size = u128::from(size);
            if millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", millis / size);
            }
        }
        unreachable!("every whole number of milliseconds divides by 1ms")
    }
}

/// A size in bytes: a plain integer, or a number with `B`, `KiB`, `MiB`, `GiB` (also `KB`/`MB`/`GB`
/// as powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let unit = unit.trim();
        if digits.is_empty() {
            return Err(format!(
                "`{s}` is not a size (write e.g. 65536, 64KiB, 100MiB)"
            ));
        }
        let factor = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|&(_, f)| f)
                .ok_or_else(|| format!("`{s}` has no valid unit (B, KiB, MiB, GiB, KB, MB, GB)"))?
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is out of range"))?;
        n.checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("`{s}` is out of range"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in &SIZE_UNITS[..3] {
            if self.0 >= *size && self.0.is_multiple_of(*size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// `url` without the userinfo of its authority (`mqtts://user:pass@host` →
/// `mqtts://<redacted>@host`): shown in `check-config` and in errors, where a password in the
/// URL must not appear.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// [`redact_userinfo`] on every URL-looking word of `text`.
pub fn redact_userinfo_in(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                let start = w.find(|c: char| c.is_ascii_alphanumeric()).unwrap_or(0);
                format!("{}{}", &w[..start], redact_userinfo(&w[start..]))
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A secret value (token, password). Never printed: `Debug`, `Display` and `Serialize` redact it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// The value is overwritten when the last copy is dropped (a reload replaces the config).
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<unset>)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(FromStrVisitor::<$ty>::new())
            }
        }
    };
}
string_serde!(Duration);
string_serde!(ByteSize);

/// Visits a string (parsed with `FromStr`) or, for types that allow it, an integer.
struct FromStrVisitor<T>(std::marker::PhantomData<T>);

impl<T> FromStrVisitor<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> de::Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr<Err = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string such as \"30s\" or \"64KiB\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        // Bare integers are accepted where the type itself accepts unit-less numbers (sizes);
        // durations reject them with a message asking for a unit.
        v.to_string().parse().map_err(E::custom)
    }
}

/// serde `deserialize_with` for numbers: a TOML integer, or a string (environment variables).
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + TryFrom<i64>,
    <T as FromStr>::Err: fmt::Display,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<T> de::Visitor<'_> for V<T>
    where
        T: FromStr + TryFrom<i64>,
        <T as FromStr>::Err: fmt::Display,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.trim()
                .parse()
                .map_err(|e| E::custom(format!("`{v}` is not a valid number: {e}")))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// serde `deserialize_with` for booleans: TOML `true`/`false`, or the strings `true`/`false`/`1`/`0`.
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(E::custom(format!("`{other}` is not true or false"))),
            }
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_print_back() {
        for (text, secs, shown) in [
            ("30s", 30, "30s"),
            ("5m", 300, "5m"),
            ("8760h", 8760 * 3600, "365d"),
            ("30d", 30 * 86400, "30d"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.get().as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), d);
        }
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
        assert_eq!("90s".parse::<Duration>().unwrap().to_string(), "90s");
        assert_eq!("120s".parse::<Duration>().unwrap().to_string(), "2m");
    }

    #[test]
    fn durations_without_unit_or_with_junk_are_refused() {
        for bad in ["30", "", "s", "3x", "-1s", "1.5h", "99999999999999999999d"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn byte_sizes_parse_binary_and_decimal_units() {
        assert_eq!("65536".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("100MiB".parse::<ByteSize>().unwrap().0, 100 << 20);
        assert_eq!("1GB".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn secrets_never_show_their_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
