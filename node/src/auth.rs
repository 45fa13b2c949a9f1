//! Who may call what: API tokens with scopes, and the cluster secret that Raft traffic
//! carries.
//!
//! Tokens file (one or more, e.g. the `tokens` key of a mounted Secret): one token per
//! line, `<token> <scope>[,<scope>...]`, scopes from `read`, `write`, `admin`; `#`
//! starts a comment line; blank lines are skipped. A scope grants exactly its own
//! routes, nothing implied: a client that reads and writes lists `read,write`.
//!
//! Presented secrets are never looked up in a map, whose timing would tell how much
//! of a guess was right: each is hashed (SHA-256) and the digest compared in constant
//! time with every known digest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::reloading::{Reloading, at_line};

/// Header carrying the cluster secret on every Raft RPC.
pub const CLUSTER_SECRET_HEADER: &str = "x-dcache-cluster-secret";

/// Secrets shorter than this are refused: a token or cluster secret anyone can guess
/// protects nothing.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Write => 2,
            Self::Admin => 4,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

type SecretDigest = [u8; 32];

fn digest(secret: &[u8]) -> SecretDigest {
    Sha256::digest(secret).into()
}

/// The tokens of one or more token files.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<(SecretDigest, Scopes)>,
}

impl Tokens {
    /// Parses token files; the error names the file and line at fault.
    pub fn parse(files: &[(PathBuf, Vec<u8>)]) -> Result<Self, String> {
        let mut entries: Vec<(SecretDigest, Scopes)> = Vec::new();
        for (path, bytes) in files {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| format!("{}: not UTF-8 text: {e}", path.display()))?;
            for (index, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = at_line(path, index + 1);
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [token, scopes] = fields[..] else {
                    return Err(format!(
                        "{at}: expected `<token> <scope>[,<scope>...]`, found {} fields",
                        fields.len()
                    ));
                };
                if token.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "{at}: token is {} bytes, shorter than {MIN_SECRET_BYTES}",
                        token.len()
                    ));
                }
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!("{at}: token has a character a header cannot carry"));
                }
                let mut granted = Scopes::default();
                for name in scopes.split(',') {
                    let scope = Scope::parse(name).ok_or_else(|| {
                        format!("{at}: unknown scope {name:?} (read, write or admin)")
                    })?;
                    granted.0 |= scope.bit();
                }
                let token_digest = digest(token.as_bytes());
                if entries.iter().any(|(known, _)| *known == token_digest) {
                    return Err(format!("{at}: the same token appears twice"));
                }
                entries.push((token_digest, granted));
            }
        }
        if entries.is_empty() {
            let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
            return Err(format!(
                "no token in {}: every request would be refused",
                names.join(", ")
            ));
        }
        Ok(Self { entries })
    }

    /// The scopes of `presented`; empty for an unknown token. Takes the same time
    /// whichever token (if any) matches.
    pub fn scopes_of(&self, presented: &[u8]) -> Scopes {
        let presented = digest(presented);
        let mut granted = 0u8;
        for (known, scopes) in &self.entries {
            granted |= u8::conditional_select(&0, &scopes.0, known.ct_eq(&presented));
        }
        Scopes(granted)
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one nobody issued: 401.
    Unauthenticated(&'static str),
    /// A valid token without the scope the route needs: 403.
    Forbidden(Scope),
}

/// The tokens this node accepts, reloaded when their files change.
pub struct Authenticator {
    tokens: Reloading<Tokens>,
}

impl Authenticator {
    pub fn load(paths: Vec<PathBuf>, reload_every: Duration) -> Result<Self, String> {
        Ok(Self {
            tokens: Reloading::load("API tokens", paths, reload_every, Tokens::parse)?,
        })
    }

    /// The scopes a bare token grants (RESP's `AUTH <token>`); empty for an unknown one.
    pub fn scopes(&self, token: &[u8]) -> Scopes {
        self.tokens.get().scopes_of(token)
    }

    /// Checks the `Authorization: Bearer <token>` header value against `needed`.
    pub fn check(&self, authorization: Option<&[u8]>, needed: Scope) -> Result<(), Denied> {
        let Some(value) = authorization else {
            return Err(Denied::Unauthenticated("missing bearer token"));
        };
        let token = bearer_token(value).ok_or(Denied::Unauthenticated(
            "the Authorization header is not `Bearer <token>`",
        ))?;
        let scopes = self.tokens.get().scopes_of(token);
        if scopes.is_empty() {
            Err(Denied::Unauthenticated("invalid token"))
        } else if scopes.contains(needed) {
            Ok(())
        } else {
            Err(Denied::Forbidden(needed))
        }
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// The cluster secret: what this node sends with its Raft RPCs and requires on the
/// ones it receives.
pub struct ClusterSecret {
    secret: Reloading<(String, SecretDigest)>,
}

impl ClusterSecret {
    pub fn load(path: PathBuf, reload_every: Duration) -> Result<Self, String> {
        let secret = Reloading::load("cluster secret", vec![path], reload_every, |files| {
            let (path, bytes) = &files[0];
            let text = std::str::from_utf8(bytes)
                .map_err(|e| format!("{}: not UTF-8 text: {e}", path.display()))?
                .trim();
            if text.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "{}: the cluster secret is {} bytes, shorter than {MIN_SECRET_BYTES}",
                    path.display(),
                    text.len()
                ));
            }
            if !text.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{}: the cluster secret has a character a header cannot carry",
                    path.display()
                ));
            }
            Ok((text.to_owned(), digest(text.as_bytes())))
        })?;
        Ok(Self { secret })
    }

    /// The secret to send.
    pub fn value(&self) -> Arc<(String, SecretDigest)> {
        self.secret.get()
    }

    /// Whether `presented` is the secret, compared in constant time.
    pub fn matches(&self, presented: Option<&[u8]>) -> bool {
        let known = self.secret.get();
        let presented = digest(presented.unwrap_or_default());
        bool::from(known.1.ct_eq(&presented))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Result<Tokens, String> {
        Tokens::parse(&[(PathBuf::from("tokens"), text.as_bytes().to_vec())])
    }

    const READER: &str = "reader-token-0123456789";
    const WRITER: &str = "writer-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    #[test]
    fn tokens_file_grants_exactly_the_listed_scopes() {
        let tokens = tokens(&format!(
            "# who may do what\n\n{READER} read\n  {WRITER}   read,write  \n{ADMIN} admin\n"
        ))
        .unwrap();
        let reader = tokens.scopes_of(READER.as_bytes());
        assert!(reader.contains(Scope::Read) && !reader.contains(Scope::Write));
        let writer = tokens.scopes_of(WRITER.as_bytes());
        assert!(writer.contains(Scope::Read) && writer.contains(Scope::Write));
        assert!(!writer.contains(Scope::Admin));
        let admin = tokens.scopes_of(ADMIN.as_bytes());
        assert!(admin.contains(Scope::Admin) && !admin.contains(Scope::Read));
        assert!(tokens.scopes_of(b"nobody-issued-this-one").is_empty());
        assert!(tokens.scopes_of(b"").is_empty());
    }

    #[test]
    fn invalid_tokens_files_name_the_line() {
        let cases = [
            (format!("# ok\n{READER}\n"), "tokens:2: expected"),
            (
                format!("{READER} read\n{WRITER} read, write\n"),
                "tokens:2: expected",
            ),
            (
                format!("{READER} reed\n"),
                "tokens:1: unknown scope \"reed\"",
            ),
            ("short read\n".to_owned(), "tokens:1: token is 5 bytes"),
            (
                format!("{READER} read\n{READER} write\n"),
                "tokens:2: the same token",
            ),
            ("# nothing but comments\n".to_owned(), "no token in tokens"),
        ];
        for (text, expected) in cases {
            let err = tokens(&text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bear"), None);
    }
}
