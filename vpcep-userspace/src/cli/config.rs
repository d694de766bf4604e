//! Where the CLI finds the API and its credentials: flags, then environment variables, then a
//! named profile of the config file.
//!
//! ```toml
//! default_profile = "provider"
//!
//! [profiles.provider]
//! url = "https://127.0.0.1:8443"
//! ca_file = "/etc/vpcep/ca.pem"   # default: the system's CA store
//! ak = "…"
//! sk = "…"
//! project_id = "…"
//!
//! [profiles.admin]
//! url = "https://127.0.0.1:8443"
//! token = "…"
//! ```
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{CliError, CliResult, GlobalArgs};
use crate::tls::client::ClientTls;

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Profile used without `--profile` / `VPCEP_PROFILE` (else the one named `default`).
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One named set of URL and credentials; every field is optional and the environment
/// overrides it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: Option<String>,
    pub ak: Option<String>,
    pub sk: Option<String>,
    pub project_id: Option<String>,
    /// An `X-Auth-Token` (tenant, operator or agent token).
    pub token: Option<String>,
    /// CA bundle (PEM) the API's certificate must chain to.
    pub ca_file: Option<PathBuf>,
}

/// The environment variables the CLI reads (a struct so that resolution is testable).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub config: Option<String>,
    pub profile: Option<String>,
    pub url: Option<String>,
    pub ak: Option<String>,
    pub sk: Option<String>,
    pub project_id: Option<String>,
    pub token: Option<String>,
    pub ca_file: Option<String>,
    pub xdg_config_home: Option<String>,
    pub home: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        // Empty variables count as unset, as most tools treat them.
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            config: var("VPCEP_CONFIG"),
            profile: var("VPCEP_PROFILE"),
            url: var("VPCEP_URL"),
            ak: var("VPCEP_AK"),
            sk: var("VPCEP_SK"),
            project_id: var("VPCEP_PROJECT_ID"),
            token: var("VPCEP_TOKEN"),
            ca_file: var("VPCEP_CA_FILE"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            home: var("HOME"),
        }
    }

    fn default_config_path(&self) -> Option<PathBuf> {
        match (&self.xdg_config_home, &self.home) {
            (Some(x), _) => Some(Path::new(x).join("vpcep/config.toml")),
            (None, Some(h)) => Some(Path::new(h).join(".config/vpcep/config.toml")),
            (None, None) => None,
        }
    }
}

/// The resolved settings of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub ak: Option<String>,
    pub sk: Option<String>,
    pub token: Option<String>,
    pub project_id: Option<String>,
    /// Which credential is used and where it came from, e.g. `signed with AK "…" from
    /// VPCEP_AK/VPCEP_SK`.
    pub credential: String,
    /// How the API's certificate is verified.
    pub tls: ClientTls,
}

impl ConfigFile {
    pub fn load(path: &Path) -> CliResult<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| CliError::Config(format!("invalid config file {}: {e}", path.display())))
    }
}

impl Settings {
    /// Flags win over the environment, which wins over the profile. Credentials from the
    /// environment (AK/SK or token) replace the profile's as a whole, so that a profile token
    /// never mixes with an AK/SK from the environment.
    pub fn resolve(args: &GlobalArgs, env: &Env) -> CliResult<Self> {
        let (profile, origin) = select_profile(args, env)?;
        let url = args
            .url
            .clone()
            .or_else(|| env.url.clone())
            .or_else(|| profile.url.clone())
            .ok_or_else(|| {
                CliError::Config(
                    "no API URL: give --url, set VPCEP_URL or put url in a profile".to_owned(),
                )
            })?;
        let project_id = args
            .project_id
            .clone()
            .or_else(|| env.project_id.clone())
            .or_else(|| profile.project_id.clone());
        let ca_file = args
            .ca_file
            .clone()
            .or_else(|| env.ca_file.as_ref().map(PathBuf::from))
            .or_else(|| profile.ca_file.clone());
        let tls = ClientTls {
            ca_file,
            insecure: args.insecure,
            ..ClientTls::default()
        };
        let (ak, sk, token, credential) = credentials(env, profile, origin.as_deref());
        if ak.is_some() != sk.is_some() {
            return Err(CliError::Config(
                "ak and sk must be given together (VPCEP_AK/VPCEP_SK or the profile)".to_owned(),
            ));
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            ak,
            sk,
            token,
            project_id,
            credential,
            tls,
        })
    }
}

/// The profile in effect and, when it comes from a file, `profile "NAME" of PATH`.
fn select_profile(args: &GlobalArgs, env: &Env) -> CliResult<(Profile, Option<String>)> {
    let explicit = args
        .config_file
        .clone()
        .or_else(|| env.config.as_ref().map(PathBuf::from));
    let file = match (explicit, env.default_config_path()) {
        (Some(p), _) => Some((ConfigFile::load(&p)?, p)),
        (None, Some(p)) if p.exists() => Some((ConfigFile::load(&p)?, p)),
        _ => None,
    };
    let wanted = args.profile.clone().or_else(|| env.profile.clone());
    let Some((file, path)) = file else {
        return match wanted {
            Some(name) => Err(CliError::Config(format!(
                "profile {name:?} requested but there is no config file \
                 (--config-file, VPCEP_CONFIG or ~/.config/vpcep/config.toml)"
            ))),
            None => Ok((Profile::default(), None)),
        };
    };
    let origin = |name: &str| Some(format!("profile {name:?} of {}", path.display()));
    match (wanted, &file.default_profile) {
        (Some(name), _) => match file.profiles.get(&name) {
            Some(p) => Ok((p.clone(), origin(&name))),
            None => Err(CliError::Config(format!(
                "profile {name:?} is not in the config file"
            ))),
        },
        (None, Some(name)) => match file.profiles.get(name) {
            Some(p) => Ok((p.clone(), origin(name))),
            None => Err(CliError::Config(format!(
                "default_profile {name:?} is not in the config file"
            ))),
        },
        (None, None) => Ok((
            file.profiles.get("default").cloned().unwrap_or_default(),
            origin("default"),
        )),
    }
}

type Creds = (Option<String>, Option<String>, Option<String>, String);

/// AK/SK, token and a description of which credential is used and where it came from
/// (for `-v` and for 401/403 messages). Credentials from the environment replace the
/// profile's as a whole; AK/SK wins over a token from the same place.
fn credentials(env: &Env, profile: Profile, origin: Option<&str>) -> Creds {
    let env_creds = env.ak.is_some() || env.sk.is_some() || env.token.is_some();
    let (ak, sk, token, from_ak, from_token) = if env_creds {
        let (a, t) = ("VPCEP_AK/VPCEP_SK".to_owned(), "VPCEP_TOKEN".to_owned());
        (env.ak.clone(), env.sk.clone(), env.token.clone(), a, t)
    } else {
        let o = origin.unwrap_or("the profile").to_owned();
        (profile.ak, profile.sk, profile.token, o.clone(), o)
    };
    let source = match (&ak, &token) {
        (Some(a), Some(_)) => format!(
            "signed with AK {a:?} from {from_ak}; the token from {from_token} is not used \
             (AK/SK takes precedence)"
        ),
        (Some(a), None) => format!("signed with AK {a:?} from {from_ak}"),
        (None, Some(_)) => format!("X-Auth-Token from {from_token}"),
        (None, None) => "no credentials sent (set VPCEP_AK and VPCEP_SK, or VPCEP_TOKEN, or \
                         use a profile)"
            .to_owned(),
    };
    (ak, sk, token, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GlobalArgs {
        GlobalArgs {
            profile: None,
            config_file: None,
            url: None,
            project_id: None,
            output: super::super::Format::Table,
            request_timeout: 30,
            verbose: false,
            ca_file: None,
            insecure: false,
        }
    }

    fn file(text: &str) -> (PathBuf, impl Drop) {
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let p = std::env::temp_dir().join(format!("vpcep-cli-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&p, text).unwrap();
        (p.clone(), Rm(p))
    }

    #[test]
    fn environment_overrides_profile_credentials_as_a_whole() {
        let (p, _rm) = file(
            "default_profile = \"a\"\n[profiles.a]\nurl = \"http://x:1/\"\ntoken = \"t\"\n\
             project_id = \"pa\"\n",
        );
        let env = Env {
            config: Some(p.display().to_string()),
            ..Default::default()
        };
        let s = Settings::resolve(&args(), &env).unwrap();
        assert_eq!(s.url, "http://x:1");
        assert_eq!(s.token.as_deref(), Some("t"));
        let env = Env {
            ak: Some("AK".into()),
            sk: Some("SK".into()),
            ..env
        };
        let s = Settings::resolve(&args(), &env).unwrap();
        assert_eq!((s.ak.as_deref(), s.token), (Some("AK"), None));
        assert_eq!(s.project_id.as_deref(), Some("pa"));
    }

    #[test]
    fn bad_config_is_a_config_error() {
        let (p, _rm) = file("[profiles.a]\nurl = 3\n");
        let env = Env {
            config: Some(p.display().to_string()),
            ..Default::default()
        };
        let e = Settings::resolve(&args(), &env).unwrap_err();
        assert_eq!(e.exit_code(), super::super::exit::CONFIG);
        let mut a = args();
        a.profile = Some("nope".into());
        a.url = Some("http://x".into());
        let e = Settings::resolve(&a, &Env::default()).unwrap_err();
        assert_eq!(e.exit_code(), super::super::exit::CONFIG);
        assert!(Settings::resolve(&args(), &Env::default()).is_err());
    }
}
