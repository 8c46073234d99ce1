//! Seed 001's environment variables, for `collector` and `standalone`.
//!
//! ARK's backend (seed 001) is configured with `REDIS_URL` (its Redis, which
//! holds the federation's peers and sync events) and `ARK_BASE_PATH` (its
//! databases are `data/reasoning_logs.db` and `data/ark.db` under it). A
//! collector started in that environment, with no flag, uses them:
//!
//! * `REDIS_URL` is the collector's Redis when neither `--redis-url` nor
//!   `--redis-cluster-urls` is given (as flag or `SWITCHBOARD_` variable) — and
//!   so, as always, the federation source too. `standalone` has no engine
//!   Redis: there it is the federation source when `--federation-redis-url` is
//!   not given (the only Redis standalone reads, as in the seed's backend).
//! * `ARK_BASE_PATH` gives `--reasoning-db` and `--ark-db`, each one when it is
//!   not given.
//!
//! clap reads one variable per flag (`SWITCHBOARD_<FLAG>`, kept so by a unit
//! test), so these fallbacks are applied here, after parsing: a flag or its
//! `SWITCHBOARD_` variable always wins. An empty variable counts as unset.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{CollectorArgs, CollectorSources, StandaloneArgs};

/// The collector's `--help` epilogue.
pub const COLLECTOR_HELP: &str = "\
Seed 001's environment, for what no flag or SWITCHBOARD_* variable sets:
  REDIS_URL      the Redis (as --redis-url) when neither --redis-url nor
                 --redis-cluster-urls is given; so also the federation's
  ARK_BASE_PATH  --reasoning-db $ARK_BASE_PATH/data/reasoning_logs.db and
                 --ark-db $ARK_BASE_PATH/data/ark.db, each when not given";

/// standalone's `--help` epilogue.
pub const STANDALONE_HELP: &str = "\
Seed 001's environment, for what no flag or SWITCHBOARD_* variable sets:
  REDIS_URL      the federation's Redis (as --federation-redis-url) when that
                 is not given; the engine stays in memory
  ARK_BASE_PATH  --reasoning-db $ARK_BASE_PATH/data/reasoning_logs.db and
                 --ark-db $ARK_BASE_PATH/data/ark.db, each when not given";

/// The variables' names.
pub const REDIS_URL: &str = "REDIS_URL";
pub const ARK_BASE_PATH: &str = "ARK_BASE_PATH";

/// Seed 001's variables, as found in the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedEnv {
    /// `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `ARK_BASE_PATH`.
    pub ark_base_path: Option<PathBuf>,
}

/// One setting taken from a seed variable, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The variable read.
    pub variable: &'static str,
    /// The flag it stands for.
    pub flag: &'static str,
    /// The value, when it can be shown (paths; never a Redis URL, which may
    /// hold a password).
    pub shown: Option<String>,
}

impl SeedEnv {
    /// The variables of this process's environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The variables as `get` finds them; empty ones count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Self {
        let set = |name| get(name).filter(|v| !v.is_empty());
        Self {
            redis_url: set(REDIS_URL).map(|v| v.to_string_lossy().trim().to_string()),
            ark_base_path: set(ARK_BASE_PATH).map(PathBuf::from),
        }
    }

    /// Fills the collector's unset Redis and database paths.
    pub fn apply_to_collector(&self, args: &mut CollectorArgs) -> Vec<Applied> {
        let mut applied = Vec::new();
        let redis = &mut args.redis;
        if redis.redis_url.is_none()
            && redis.redis_cluster_urls.is_empty()
            && let Some(url) = &self.redis_url
        {
            redis.redis_url = Some(url.clone());
            applied.push(Applied {
                variable: REDIS_URL,
                flag: "--redis-url",
                shown: None,
            });
        }
        applied.extend(self.apply_databases(&mut args.sources));
        applied
    }

    /// Fills standalone's unset federation Redis and database paths.
    pub fn apply_to_standalone(&self, args: &mut StandaloneArgs) -> Vec<Applied> {
        let mut applied = Vec::new();
        if args.sources.federation_redis_url.is_none()
            && let Some(url) = &self.redis_url
        {
            args.sources.federation_redis_url = Some(url.clone());
            applied.push(Applied {
                variable: REDIS_URL,
                flag: "--federation-redis-url",
                shown: None,
            });
        }
        applied.extend(self.apply_databases(&mut args.sources));
        applied
    }

    fn apply_databases(&self, sources: &mut CollectorSources) -> Vec<Applied> {
        let Some(base) = &self.ark_base_path else {
            return Vec::new();
        };
        let mut applied = Vec::new();
        for (slot, file, flag) in [
            (
                &mut sources.reasoning_db,
                "reasoning_logs.db",
                "--reasoning-db",
            ),
            (&mut sources.ark_db, "ark.db", "--ark-db"),
        ] {
            if slot.is_none() {
                let path = base.join("data").join(file);
                applied.push(Applied {
                    variable: ARK_BASE_PATH,
                    flag,
                    shown: Some(path.display().to_string()),
                });
                *slot = Some(path);
            }
        }
        applied
    }
}

/// Logs what was taken from seed 001's variables.
pub fn log_applied(applied: &[Applied]) {
    for a in applied {
        tracing::info!(
            variable = a.variable,
            flag = a.flag,
            value = a.shown.as_deref().unwrap_or("(not shown)"),
            "seed 001's environment: {} stands for {} (no flag or SWITCHBOARD_ variable gives it)",
            a.variable,
            a.flag
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn env(pairs: &[(&str, &str)]) -> SeedEnv {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SeedEnv::from_lookup(|name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    fn collector(args: &[&str]) -> CollectorArgs {
        // try_parse_from reads SWITCHBOARD_* from this process's environment;
        // the test runner sets none of the flags used here.
        match Cli::try_parse_from(["switchboard", "collector"].iter().chain(args)) {
            Ok(Cli {
                command: Command::Collector(a),
                ..
            }) => a,
            other => panic!("{other:?}"),
        }
    }

    fn standalone(args: &[&str]) -> StandaloneArgs {
        match Cli::try_parse_from(["switchboard", "standalone"].iter().chain(args)) {
            Ok(Cli {
                command: Command::Standalone(a),
                ..
            }) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seed_variables_fill_only_what_is_unset() {
        let seed = env(&[
            ("REDIS_URL", "redis://seed:6379/0"),
            ("ARK_BASE_PATH", "/ark"),
        ]);
        let mut a = collector(&[]);
        let applied = seed.apply_to_collector(&mut a);
        assert_eq!(a.redis.redis_url.as_deref(), Some("redis://seed:6379/0"));
        assert_eq!(
            a.sources.reasoning_db,
            Some(PathBuf::from("/ark/data/reasoning_logs.db"))
        );
        assert_eq!(a.sources.ark_db, Some(PathBuf::from("/ark/data/ark.db")));
        assert_eq!(applied.len(), 3);
        assert_eq!(applied[0].shown, None, "a Redis URL is never logged");

        let mut a = collector(&[
            "--redis-url",
            "redis://flag:1",
            "--ark-db",
            "/elsewhere/ark.db",
        ]);
        seed.apply_to_collector(&mut a);
        assert_eq!(a.redis.redis_url.as_deref(), Some("redis://flag:1"));
        assert_eq!(a.sources.ark_db, Some(PathBuf::from("/elsewhere/ark.db")));
        assert_eq!(
            a.sources.reasoning_db,
            Some(PathBuf::from("/ark/data/reasoning_logs.db"))
        );

        // A cluster given: REDIS_URL is not a second Redis.
        let mut a = collector(&["--redis-cluster-urls", "redis://n1:7000"]);
        seed.apply_to_collector(&mut a);
        assert_eq!(a.redis.redis_url, None);
    }

    #[test]
    fn standalone_takes_redis_url_as_its_federation_source() {
        let seed = env(&[("REDIS_URL", "redis://seed:6379/0")]);
        let mut s = standalone(&[]);
        seed.apply_to_standalone(&mut s);
        assert_eq!(
            s.sources.federation_redis_url.as_deref(),
            Some("redis://seed:6379/0")
        );
        assert_eq!(s.sources.reasoning_db, None, "no ARK_BASE_PATH");
        let mut s = standalone(&["--federation-redis-url", "redis://fed:1"]);
        seed.apply_to_standalone(&mut s);
        assert_eq!(
            s.sources.federation_redis_url.as_deref(),
            Some("redis://fed:1")
        );
    }

    #[test]
    fn empty_variables_are_unset() {
        assert_eq!(
            env(&[("REDIS_URL", ""), ("ARK_BASE_PATH", "")]),
            SeedEnv::default()
        );
    }
}
