//! CNI errors: the spec's error object (`{"cniVersion","code","msg","details"}`) and its codes.

use serde_json::{json, Value};

/// Incompatible CNI version.
pub const ERR_INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration.
pub const ERR_UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const ERR_UNKNOWN_CONTAINER: u32 = 3;
/// Invalid necessary environment variables.
pub const ERR_INVALID_ENV: u32 = 4;
/// I/O failure.
pub const ERR_IO: u32 = 5;
/// Failed to decode content.
pub const ERR_DECODE: u32 = 6;
/// Invalid network configuration.
pub const ERR_INVALID_CONFIG: u32 = 7;
/// `CNI_NETNS` is not usable (libcni's `ErrInvalidNetNS`): missing, not a netns, or the plugin's own.
pub const ERR_INVALID_NETNS: u32 = 8;
/// Try again later (transient).
pub const ERR_TRY_AGAIN: u32 = 11;
/// STATUS: the plugin is not available.
pub const ERR_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: a kernel (netlink, sysctl, netns) operation failed.
pub const ERR_KERNEL: u32 = 100;
/// Plugin-specific: `CNI_IFNAME` already exists inside the container's netns.
pub const ERR_IFACE_EXISTS: u32 = 101;
/// Plugin-specific: the delegated IPAM plugin could not be run or gave unusable output.
pub const ERR_DELEGATE: u32 = 102;
/// Plugin-specific: the weft router answered something unexpected.
pub const ERR_ROUTER: u32 = 103;
/// Plugin-specific: CHECK found the attachment missing or different.
pub const ERR_CHECK_FAILED: u32 = 104;
/// Plugin-specific: GC could not release every stale reservation.
pub const ERR_GC: u32 = 105;

/// A CNI error as it goes out on stdout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if .details.is_empty() { String::new() } else { format!(" ({})", .details) })]
pub struct CniError {
    /// The spec's error code (0-99 reserved by the spec, 100+ plugin-specific).
    pub code: u32,
    /// Short description.
    pub msg: String,
    /// Longer description / what to do. Empty means "not set".
    pub details: String,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// Prefixes the message with some context (`"<ctx>: <msg>"`).
    pub fn context(mut self, ctx: impl AsRef<str>) -> CniError {
        self.msg = format!("{}: {}", ctx.as_ref(), self.msg);
        self
    }

    /// Code 1.
    pub fn version(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_INCOMPATIBLE_VERSION, msg)
    }
    /// Code 2.
    pub fn unsupported_field(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_UNSUPPORTED_FIELD, msg)
    }
    /// Code 4.
    pub fn env(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_INVALID_ENV, msg)
    }
    /// Code 5.
    pub fn io(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_IO, msg)
    }
    /// Code 6.
    pub fn decode(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_DECODE, msg)
    }
    /// Code 7.
    pub fn config(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_INVALID_CONFIG, msg)
    }
    /// Code 11.
    pub fn try_again(msg: impl Into<String>) -> CniError {
        CniError::new(ERR_TRY_AGAIN, msg)
    }
    /// Code 100: a kernel operation failed.
    pub fn kernel(what: impl AsRef<str>, err: impl std::fmt::Display) -> CniError {
        CniError::new(ERR_KERNEL, format!("{}: {err}", what.as_ref()))
    }

    /// The error object as JSON, for `cni_version` (omitted when `None`).
    pub fn to_json(&self, cni_version: Option<&str>) -> Value {
        let mut v = json!({ "code": self.code, "msg": self.msg });
        if let Some(ver) = cni_version {
            v["cniVersion"] = json!(ver);
        }
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }

    /// Parses an error object printed by another plugin (a delegated IPAM plugin).
    pub fn from_plugin_output(stdout: &[u8]) -> Option<CniError> {
        let v: Value = serde_json::from_slice(stdout).ok()?;
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let msg = v
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let details = v
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Some(CniError { code, msg, details })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = CniError::env("required env variables [CNI_NETNS] missing");
        let j = e.to_json(Some("1.0.0"));
        assert_eq!(j["code"], 4);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert!(j.get("details").is_none());
        let j = e.clone().with_details("d").to_json(None);
        assert_eq!(j["details"], "d");
        assert!(j.get("cniVersion").is_none());
    }

    #[test]
    fn parse_plugin_error() {
        let e = CniError::from_plugin_output(
            br#"{"code":999,"msg":"failed to allocate","details":"range full"}"#,
        )
        .unwrap();
        assert_eq!(e.code, 999);
        assert_eq!(e.msg, "failed to allocate");
        assert_eq!(e.details, "range full");
        assert!(CniError::from_plugin_output(b"not json").is_none());
        assert!(CniError::from_plugin_output(br#"{"msg":"no code"}"#).is_none());
        assert!(CniError::from_plugin_output(br#"{"code":-1}"#).is_none());
    }

    #[test]
    fn display_and_context() {
        let e = CniError::config("missing network name").context("ADD");
        assert_eq!(e.to_string(), "CNI error 7: ADD: missing network name");
        let e = CniError::try_again("x").with_details("y");
        assert_eq!(e.to_string(), "CNI error 11: x (y)");
    }
}
