//! `weft setup-cni`: installs the plugin binary into the CNI bin dir and writes the network
//! configuration, the way Weave's `setup-cni` does: the binary is copied to
//! `weft-plugin-<version>` and `weft-net` links to it; `10-weft.conflist` is written only when
//! absent, so an operator's edits are never overwritten.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::CNI_PLUGIN_NAME;

pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// Weave's configuration, which sorts before ours and would shadow it on a migrated node.
pub const WEAVE_CONFLIST_NAME: &str = "10-weave.conflist";

#[derive(Args, Debug)]
pub struct SetupCniArgs {
    /// Where the runtime looks for plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where the runtime looks for network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// Hairpin mode on pods' host-side veths (Weave's HAIRPIN_MODE).
    #[arg(long, env = "HAIRPIN_MODE", default_value_t = true, action = clap::ArgAction::Set)]
    pub hairpin_mode: bool,
    /// Leave Weave Net's 10-weave.conflist in place instead of moving it aside.
    #[arg(long)]
    pub keep_weave_config: bool,
}

pub fn conflist(hairpin: bool) -> String {
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [
            { "name": "weft", "type": CNI_PLUGIN_NAME, "hairpinMode": hairpin },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
        ],
    });
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON value always serializes");
    s.push('\n');
    s
}

pub fn run(args: &SetupCniArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let installed = install_binary(&exe, &args.bin_dir)?;
    println!(
        "installed {} -> {}",
        args.bin_dir.join(CNI_PLUGIN_NAME).display(),
        installed.display()
    );
    match write_conflist(&args.conf_dir, args.hairpin_mode, !args.keep_weave_config)? {
        ConfOutcome::Written(p) => println!("wrote {}", p.display()),
        ConfOutcome::Kept(p) => println!("kept existing {} (not overwritten)", p.display()),
    }
    Ok(())
}

/// Copies `exe` to `<bin_dir>/weft-plugin-<version>` and points `<bin_dir>/weft-net` at it.
/// Both steps go through a temporary name and a rename, so a runtime never sees a partial file.
pub fn install_binary(exe: &Path, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let name = format!("weft-plugin-{}", env!("CARGO_PKG_VERSION"));
    let target = bin_dir.join(&name);
    let tmp = bin_dir.join(format!(".{name}.tmp{}", std::process::id()));
    fs::copy(exe, &tmp)
        .with_context(|| format!("copying {} to {}", exe.display(), tmp.display()))?;
    fs::rename(&tmp, &target).with_context(|| format!("installing {}", target.display()))?;
    let link = bin_dir.join(CNI_PLUGIN_NAME);
    let tmp_link = bin_dir.join(format!(".{CNI_PLUGIN_NAME}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&name, &tmp_link)
        .with_context(|| format!("creating {}", tmp_link.display()))?;
    fs::rename(&tmp_link, &link).with_context(|| format!("installing {}", link.display()))?;
    Ok(target)
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfOutcome {
    Written(PathBuf),
    Kept(PathBuf),
}

pub fn write_conflist(
    conf_dir: &Path,
    hairpin: bool,
    move_weave_aside: bool,
) -> anyhow::Result<ConfOutcome> {
    fs::create_dir_all(conf_dir).with_context(|| format!("creating {}", conf_dir.display()))?;
    let weave = conf_dir.join(WEAVE_CONFLIST_NAME);
    if move_weave_aside && weave.exists() {
        let aside = conf_dir.join(format!("{WEAVE_CONFLIST_NAME}.replaced-by-weft"));
        fs::rename(&weave, &aside).with_context(|| format!("moving {} aside", weave.display()))?;
        eprintln!(
            "moved Weave Net's {} to {} (it sorts first and would shadow Weft's)",
            weave.display(),
            aside.display()
        );
    }
    let path = conf_dir.join(CONFLIST_NAME);
    if path.exists() {
        return Ok(ConfOutcome::Kept(path));
    }
    let tmp = conf_dir.join(format!(".{CONFLIST_NAME}.tmp{}", std::process::id()));
    fs::write(&tmp, conflist(hairpin)).with_context(|| format!("writing {}", tmp.display()))?;
    // A hard link fails if the file appeared meanwhile: never overwrite it.
    match fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(ConfOutcome::Written(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            Ok(ConfOutcome::Kept(path))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e).with_context(|| format!("writing {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_is_valid_and_chains_portmap() {
        let v: serde_json::Value = serde_json::from_str(&conflist(false)).unwrap();
        assert_eq!(v["plugins"][0]["type"], CNI_PLUGIN_NAME);
        assert_eq!(v["plugins"][0]["hairpinMode"], false);
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn never_overwrites_an_edited_conflist() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write_conflist(dir.path(), true, true).unwrap(),
            ConfOutcome::Written(_)
        ));
        let path = dir.path().join(CONFLIST_NAME);
        fs::write(&path, "{\"edited\":true}").unwrap();
        assert!(matches!(
            write_conflist(dir.path(), true, true).unwrap(),
            ConfOutcome::Kept(_)
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"edited\":true}");
    }

    #[test]
    fn moves_weave_config_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(WEAVE_CONFLIST_NAME), "{}").unwrap();
        write_conflist(dir.path(), true, true).unwrap();
        assert!(!dir.path().join(WEAVE_CONFLIST_NAME).exists());
        assert!(dir
            .path()
            .join("10-weave.conflist.replaced-by-weft")
            .exists());
        fs::write(dir.path().join(WEAVE_CONFLIST_NAME), "{}").unwrap();
        write_conflist(dir.path(), true, false).unwrap();
        assert!(dir.path().join(WEAVE_CONFLIST_NAME).exists());
    }

    #[test]
    fn installs_binary_and_link() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-weft");
        fs::write(&exe, b"#!/bin/sh\n").unwrap();
        let bin = dir.path().join("bin");
        let target = install_binary(&exe, &bin).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"#!/bin/sh\n");
        let link = fs::read_link(bin.join(CNI_PLUGIN_NAME)).unwrap();
        assert_eq!(bin.join(link), target);
        // Idempotent.
        install_binary(&exe, &bin).unwrap();
    }
}
