//! The accounts file: people (password grant) and clients (client_credentials grant), each
//! with a role and an argon2id hash of its password or secret, never the secret itself.
//! In Kubernetes the file is a Secret mounted into the gateway; `parkingctl users add`
//! writes it.
//!
//! ```yaml
//! users:
//!   "3117": { role: employee, hash: "$argon2id$v=19$m=19456,t=2,p=1$..." }
//! clients:
//!   ops-bot: { role: manager, hash: "$argon2id$..." }
//! ```

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use parking_common::identity::Role;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, RwLock};
use tokio_util::sync::CancellationToken;

/// One login.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub role: Role,
    /// argon2id PHC string of the password (users) or secret (clients).
    pub hash: String,
}

/// Everyone who may get a token.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    /// People, by login name; an employee's login is their member id.
    #[serde(default)]
    pub users: BTreeMap<String, Account>,
    /// Programs, by client id.
    #[serde(default)]
    pub clients: BTreeMap<String, Account>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("accounts file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("accounts file {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("accounts file {path}: {name:?} has an unreadable hash: {message}")]
    Hash {
        path: String,
        name: String,
        message: String,
    },
    #[error("hashing failed: {0}")]
    Hashing(String),
    #[error("a password or secret must have at least {MIN_SECRET_LEN} characters")]
    TooShort,
    #[error("{0:?} is not a usable name: 1 to 64 of A-Z a-z 0-9 . _ @ - (an employee's is their member id)")]
    Name(String),
}

/// Shortest password or secret accepted when an account is written.
pub const MIN_SECRET_LEN: usize = 8;

/// A hash nobody's password matches, verified for unknown names so that a wrong name
/// costs the same time as a wrong password and does not reveal which names exist.
static DECOY: LazyLock<Option<String>> =
    LazyLock::new(|| hash_secret("decoy-never-a-password").ok());

/// argon2id with the crate's defaults (OWASP's m=19 MiB, t=2, p=1) and a random salt.
pub fn hash_secret(secret: &str) -> Result<String, Error> {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Hashing(e.to_string()))
}

/// Writes `text` to `path` readable by its owner only, replacing the file in one rename
/// so a reader never sees half of it (accounts, parkingctl's token).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    // A leftover file keeps its old mode when opened: set it again.
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A login or client id: a valid token subject without `:` (kept for `client:` subjects).
fn usable_name(name: &str) -> bool {
    parking_common::identity::valid_name(name) && !name.contains(':')
}

/// Checks `secret` against a PHC string; the comparison inside is constant-time.
fn matches(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

impl Accounts {
    /// Reads and checks the file (every hash must parse, so a typo fails at start).
    pub fn load(path: &Path) -> Result<Accounts, Error> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?;
        let accounts: Accounts = serde_yaml_ng::from_str(&text).map_err(|source| Error::Parse {
            path: shown.clone(),
            source,
        })?;
        for (name, account) in accounts.users.iter().chain(accounts.clients.iter()) {
            if !usable_name(name) {
                return Err(Error::Name(name.clone()));
            }
            PasswordHash::new(&account.hash).map_err(|e| Error::Hash {
                path: shown.clone(),
                name: name.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(accounts)
    }

    /// Reads the file, or an empty set when it does not exist yet.
    pub fn load_or_default(path: &Path) -> Result<Accounts, Error> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Accounts::default())
        }
    }

    /// Writes the file readable by its owner only, replacing it in one rename so the
    /// gateway never reads half a file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let shown = path.display().to_string();
        let io = |source| Error::Io {
            path: shown.clone(),
            source,
        };
        let text = serde_yaml_ng::to_string(self).map_err(|source| Error::Parse {
            path: shown.clone(),
            source,
        })?;
        let text = format!(
            "# parking-mesh accounts: argon2id hashes only; written by `parkingctl users add`\n{text}"
        );
        write_private(path, &text).map_err(io)
    }

    /// Adds or replaces a user (or a client when `client`).
    pub fn set(&mut self, client: bool, name: &str, role: Role, secret: &str) -> Result<(), Error> {
        if !usable_name(name) {
            return Err(Error::Name(name.to_owned()));
        }
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(Error::TooShort);
        }
        let account = Account {
            role,
            hash: hash_secret(secret)?,
        };
        let map = if client {
            &mut self.clients
        } else {
            &mut self.users
        };
        map.insert(name.to_owned(), account);
        Ok(())
    }

    /// The role of user `name` when `password` is theirs. Takes an argon2 verification's
    /// time whether or not the name exists.
    pub fn check_user(&self, name: &str, password: &str) -> Option<Role> {
        Self::check(&self.users, name, password)
    }

    /// The role of client `id` when `secret` is its secret.
    pub fn check_client(&self, id: &str, secret: &str) -> Option<Role> {
        Self::check(&self.clients, id, secret)
    }

    fn check(map: &BTreeMap<String, Account>, name: &str, secret: &str) -> Option<Role> {
        match map.get(name) {
            Some(account) => matches(secret, &account.hash).then_some(account.role),
            None => {
                if let Some(decoy) = DECOY.as_deref() {
                    let _ = matches(secret, decoy);
                }
                None
            }
        }
    }
}

/// The accounts in force: read at start and again whenever the file changes, so
/// `parkingctl users add` (or a rotated Secret) takes effect without a restart. A file that
/// does not parse is refused and the last good accounts stay.
#[derive(Clone)]
pub struct AccountsFile {
    path: std::path::PathBuf,
    current: Arc<RwLock<Arc<Accounts>>>,
    /// The file's stamp before the accounts in use were read.
    loaded: crate::watch::Stamp,
}

impl AccountsFile {
    /// Reads `path` now; a missing file means no accounts yet (with a warning).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let loaded = crate::watch::stamp(path);
        let accounts = if path.exists() {
            Accounts::load(path)?
        } else {
            tracing::warn!(file = %path.display(), "no accounts file yet: nobody can log in (parkingctl users add writes one)");
            Accounts::default()
        };
        tracing::info!(
            users = accounts.users.len(),
            clients = accounts.clients.len(),
            "accounts loaded"
        );
        Ok(Self {
            path: path.to_owned(),
            loaded,
            current: Arc::new(RwLock::new(Arc::new(accounts))),
        })
    }

    /// The accounts as they are now.
    pub fn current(&self) -> Arc<Accounts> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file when its modification time or size changes, until `shutdown`.
    pub async fn watch(self, every: std::time::Duration, shutdown: CancellationToken) {
        let current = self.current.clone();
        crate::watch::on_change(self.path, self.loaded, every, shutdown, move |path| {
            let loaded = if path.exists() {
                Accounts::load(path)
            } else {
                Ok(Accounts::default())
            };
            match loaded {
                Ok(accounts) => {
                    tracing::info!(
                        users = accounts.users.len(),
                        clients = accounts.clients.len(),
                        "accounts reloaded"
                    );
                    *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(accounts);
                }
                Err(error) => {
                    tracing::error!(%error, "accounts file change refused; keeping the last good accounts")
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_accounts_check_their_passwords_only() {
        let dir = std::env::temp_dir().join(format!("accounts-{}", std::process::id()));
        let path = dir.join("accounts.yaml");
        let mut accounts = Accounts::default();
        accounts
            .set(false, "3117", Role::Employee, "correct horse")
            .expect("hash");
        accounts
            .set(true, "ops-bot", Role::Manager, "bot secret 1")
            .expect("hash");
        assert!(matches!(
            accounts.set(false, "x", Role::Admin, "short"),
            Err(Error::TooShort)
        ));
        for bad in ["josé", "a b", "client:x", ""] {
            assert!(matches!(
                accounts.set(false, bad, Role::Admin, "long enough"),
                Err(Error::Name(_))
            ));
        }
        accounts.save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("correct horse") && text.contains("$argon2id$"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = Accounts::load(&path).expect("load");
        assert_eq!(
            loaded.check_user("3117", "correct horse"),
            Some(Role::Employee)
        );
        assert_eq!(loaded.check_user("3117", "correct horsE"), None);
        assert_eq!(loaded.check_user("9999", "correct horse"), None);
        assert_eq!(
            loaded.check_client("ops-bot", "bot secret 1"),
            Some(Role::Manager)
        );
        // A user's password is no client secret.
        assert_eq!(loaded.check_client("3117", "correct horse"), None);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_bad_hash_fails_at_load() {
        let dir = std::env::temp_dir().join(format!("accounts-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.yaml");
        std::fs::write(&path, "users:\n  bob: { role: admin, hash: plaintext }\n").expect("write");
        assert!(matches!(Accounts::load(&path), Err(Error::Hash { .. })));
        std::fs::write(&path, "users:\n  bob: { role: root, hash: x }\n").expect("write");
        assert!(matches!(Accounts::load(&path), Err(Error::Parse { .. })));
        std::fs::remove_dir_all(dir).ok();
    }
}
