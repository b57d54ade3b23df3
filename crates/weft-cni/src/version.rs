//! CNI spec versions this plugin speaks, and what each one allows.

use crate::error::CniError;

/// The versions we support, oldest first (the order VERSION reports them in).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version we speak; used when a request gives none we can use.
pub const LATEST: &str = "1.1.0";

/// A supported CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0: adds CHECK, prevResult on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC and STATUS.
    V1_1_0,
}

impl Version {
    /// Parses one of [`SUPPORTED_VERSIONS`] (exact string).
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => return None,
        })
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses the request's `cniVersion`, failing with code 1 when we do not speak it.
    pub fn from_config(v: Option<&str>) -> Result<Version, CniError> {
        match v {
            Some(s) => Version::parse(s).ok_or_else(|| {
                CniError::version("incompatible CNI versions").with_details(format!(
                    "config is {s:?}, plugin supports {SUPPORTED_VERSIONS:?}"
                ))
            }),
            None => Err(CniError::version("incompatible CNI versions").with_details(format!(
                "config has no cniVersion (which means 0.1.0), plugin supports {SUPPORTED_VERSIONS:?}; set \"cniVersion\" in the network configuration"
            ))),
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// Results carry `ips[].version` below 1.0.0.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// GC, STATUS and the 1.1 result fields exist from 1.1.0 on.
    pub fn is_1_1(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to VERSION. `stdin` is `{"cniVersion":"X"}` or empty; we echo X when we support it,
/// otherwise we answer with [`LATEST`]. Malformed input is not an error: VERSION must answer.
pub fn version_answer(stdin: &[u8]) -> serde_json::Value {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .and_then(|s| Version::parse(&s));
    let echo = asked.map(Version::as_str).unwrap_or(LATEST);
    serde_json::json!({ "cniVersion": echo, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_all_supported() {
        for s in SUPPORTED_VERSIONS {
            assert_eq!(Version::parse(s).unwrap().as_str(), s);
        }
        for bad in ["0.1.0", "0.2.0", "1.0", "9.9.9", "", "1.1.0 "] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ordering_and_features() {
        assert!(Version::V0_3_0 < Version::V0_3_1);
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
        assert!(!Version::V1_0_0.is_1_1());
        assert!(Version::V1_1_0.is_1_1());
    }

    #[test]
    fn from_config_errors_are_code_1() {
        let e = Version::from_config(Some("9.9.9")).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.details.contains("9.9.9"));
        assert_eq!(Version::from_config(None).unwrap_err().code, 1);
        assert_eq!(
            Version::from_config(Some("0.4.0")).unwrap(),
            Version::V0_4_0
        );
    }

    #[test]
    fn version_answers() {
        let a = version_answer(br#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(a["cniVersion"], "0.3.1");
        assert_eq!(a["supportedVersions"].as_array().unwrap().len(), 5);
        assert_eq!(version_answer(b"")["cniVersion"], LATEST);
        assert_eq!(version_answer(b"{garbage")["cniVersion"], LATEST);
        assert_eq!(
            version_answer(br#"{"cniVersion":"9.9.9"}"#)["cniVersion"],
            LATEST
        );
    }
}
