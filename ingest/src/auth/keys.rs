//! Signing keys for `private_key_jwt`: loading (PEM PKCS#8 / SEC1 / PKCS#1, JWK, JWKS),
//! generating, and publishing the public JWKS.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p384::ecdsa::signature::Signer as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384};

use super::error::AuthError;

/// JWS algorithms SMART backend services require servers to support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// ECDSA P-384 with SHA-384.
    ES384,
}

impl Alg {
    /// `RS384` or `ES384`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS384 => "RS384",
            Self::ES384 => "ES384",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Alg {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        match s.to_ascii_uppercase().as_str() {
            "RS384" => Ok(Self::RS384),
            "ES384" => Ok(Self::ES384),
            other => Err(AuthError::Config {
                reason: format!("unsupported signing algorithm {other:?} (use RS384 or ES384)"),
            }),
        }
    }
}

/// DER DigestInfo prefix for SHA-384 (RFC 8017 §9.2 note 1).
const SHA384_DIGEST_INFO: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];

enum KeyMaterial {
    Rsa(Box<RsaPrivateKey>),
    Ec(p384::SecretKey),
}

/// A private signing key with its `kid`. `Debug` never prints key material.
pub struct SigningKey {
    material: KeyMaterial,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn key_err(path: &Path, reason: impl Into<String>) -> AuthError {
    AuthError::Key {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

impl SigningKey {
    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        match self.material {
            KeyMaterial::Rsa(_) => Alg::RS384,
            KeyMaterial::Ec(_) => Alg::ES384,
        }
    }

    /// The key id put in the JWS header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Replaces the key id.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// A fresh key; `kid` is the RFC 7638 thumbprint.
    pub fn generate(alg: Alg) -> Result<Self, AuthError> {
        let material = match alg {
            Alg::RS384 => KeyMaterial::Rsa(Box::new(
                // 2048 bits: the size SMART's examples and most EHRs accept; larger keys
                // slow down every assertion without a practical benefit here.
                RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| AuthError::Config {
                    reason: format!("RSA key generation failed: {e}"),
                })?,
            )),
            Alg::ES384 => KeyMaterial::Ec(p384::SecretKey::random(&mut OsRng)),
        };
        let mut k = Self {
            material,
            kid: String::new(),
        };
        k.kid = k.thumbprint();
        Ok(k)
    }

    /// Reads a key file: PEM (`PRIVATE KEY`, `EC PRIVATE KEY`, `RSA PRIVATE KEY`), a JWK
    /// or a JWKS (the first private key, or the one whose `kid` matches `kid`).
    pub fn from_file(path: &Path, kid: Option<&str>) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_with_path(&text, kid, path)
    }

    /// Parses key text (see [`SigningKey::from_file`]).
    pub fn parse(text: &str, kid: Option<&str>) -> Result<Self, AuthError> {
        Self::from_str_with_path(text, kid, Path::new("<inline>"))
    }

    fn from_str_with_path(text: &str, kid: Option<&str>, path: &Path) -> Result<Self, AuthError> {
        let trimmed = text.trim_start();
        let (material, jwk_kid) = if trimmed.starts_with('{') {
            let v: Value = serde_json::from_str(trimmed)
                .map_err(|e| key_err(path, format!("not valid JSON: {e}")))?;
            let jwk = if let Some(keys) = v.get("keys").and_then(Value::as_array) {
                keys.iter()
                    .filter(|k| k.get("d").is_some())
                    .find(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
                    .cloned()
                    .ok_or_else(|| key_err(path, "the JWKS holds no matching private key"))?
            } else {
                v
            };
            let jk = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
            (Self::from_jwk(&jwk, path)?, jk)
        } else if trimmed.contains("-----BEGIN PRIVATE KEY-----") {
            let m = match RsaPrivateKey::from_pkcs8_pem(trimmed) {
                Ok(k) => KeyMaterial::Rsa(Box::new(k)),
                Err(_) => KeyMaterial::Ec(
                    p384::SecretKey::from_pkcs8_pem(trimmed)
                        .map_err(|_| key_err(path, "PKCS#8 key is neither RSA nor EC P-384"))?,
                ),
            };
            (m, None)
        } else if trimmed.contains("-----BEGIN EC PRIVATE KEY-----") {
            let k = p384::SecretKey::from_sec1_pem(trimmed)
                .map_err(|_| key_err(path, "SEC1 key is not a P-384 key"))?;
            (KeyMaterial::Ec(k), None)
        } else if trimmed.contains("-----BEGIN RSA PRIVATE KEY-----") {
            let k = RsaPrivateKey::from_pkcs1_pem(trimmed)
                .map_err(|e| key_err(path, format!("invalid PKCS#1 RSA key: {e}")))?;
            (KeyMaterial::Rsa(Box::new(k)), None)
        } else {
            return Err(key_err(path, "not a PEM private key, JWK or JWKS"));
        };
        let mut k = Self {
            material,
            kid: String::new(),
        };
        k.kid = kid
            .map(str::to_owned)
            .or(jwk_kid)
            .unwrap_or_else(|| k.thumbprint());
        Ok(k)
    }

    fn from_jwk(jwk: &Value, path: &Path) -> Result<KeyMaterial, AuthError> {
        let field = |name: &str| -> Result<BigUint, AuthError> {
            let s = jwk
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| key_err(path, format!("JWK lacks {name:?}")))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| key_err(path, format!("JWK field {name:?} is not base64url")))?;
            Ok(BigUint::from_bytes_be(&bytes))
        };
        match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                let mut primes = Vec::new();
                if jwk.get("p").is_some() && jwk.get("q").is_some() {
                    primes.push(field("p")?);
                    primes.push(field("q")?);
                }
                let k =
                    RsaPrivateKey::from_components(field("n")?, field("e")?, field("d")?, primes)
                        .map_err(|e| key_err(path, format!("invalid RSA JWK: {e}")))?;
                Ok(KeyMaterial::Rsa(Box::new(k)))
            }
            Some("EC") => {
                let minimal = json!({"kty": "EC", "crv": jwk.get("crv"), "x": jwk.get("x"), "y": jwk.get("y"), "d": jwk.get("d")});
                let k = p384::SecretKey::from_jwk_str(&minimal.to_string())
                    .map_err(|_| key_err(path, "EC JWK is not a P-384 private key"))?;
                Ok(KeyMaterial::Ec(k))
            }
            _ => Err(key_err(path, "JWK kty must be RSA or EC")),
        }
    }

    /// The public key as a JWK with `kid`, `alg`, `use: "sig"`, `key_ops: ["verify"]`.
    pub fn public_jwk(&self) -> Value {
        let mut v = match &self.material {
            KeyMaterial::Rsa(k) => {
                let p = k.to_public_key();
                json!({"kty": "RSA", "n": b64(&p.n().to_bytes_be()), "e": b64(&p.e().to_bytes_be())})
            }
            KeyMaterial::Ec(k) => {
                serde_json::from_str(&k.public_key().to_jwk_string()).unwrap_or(Value::Null)
            }
        };
        if let Value::Object(m) = &mut v {
            m.insert("kid".into(), json!(self.kid));
            m.insert("alg".into(), json!(self.alg().as_str()));
            m.insert("use".into(), json!("sig"));
            m.insert("key_ops".into(), json!(["verify"]));
        }
        v
    }

    /// `{"keys": [public_jwk]}`.
    pub fn public_jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        let canonical = match &self.material {
            KeyMaterial::Rsa(k) => {
                let p = k.to_public_key();
                format!(
                    r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                    b64(&p.e().to_bytes_be()),
                    b64(&p.n().to_bytes_be())
                )
            }
            KeyMaterial::Ec(k) => {
                let jwk: Value =
                    serde_json::from_str(&k.public_key().to_jwk_string()).unwrap_or(Value::Null);
                let s = |n: &str| jwk.get(n).and_then(Value::as_str).unwrap_or("").to_owned();
                format!(
                    r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                    s("crv"),
                    s("x"),
                    s("y")
                )
            }
        };
        b64(&Sha256::digest(canonical.as_bytes()))
    }

    /// PKCS#8 PEM of the private key.
    fn to_pkcs8_pem(&self) -> Result<String, AuthError> {
        let pem = match &self.material {
            KeyMaterial::Rsa(k) => k.to_pkcs8_pem(LineEnding::LF).map(|z| z.to_string()),
            KeyMaterial::Ec(k) => k.to_pkcs8_pem(LineEnding::LF).map(|z| z.to_string()),
        };
        pem.map_err(|e| AuthError::Config {
            reason: format!("cannot encode the private key: {e}"),
        })
    }

    /// Signs `input` (the JWS signing input) and returns the raw JWS signature:
    /// PKCS#1 v1.5 for RS384, `r || s` (96 bytes) for ES384.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, AuthError> {
        match &self.material {
            KeyMaterial::Rsa(k) => {
                let mut prefixed = SHA384_DIGEST_INFO.to_vec();
                prefixed.extend_from_slice(&Sha384::digest(input));
                k.sign_with_rng(&mut OsRng, Pkcs1v15Sign::new_unprefixed(), &prefixed)
                    .map_err(|e| AuthError::Config {
                        reason: format!("RS384 signing failed: {e}"),
                    })
            }
            KeyMaterial::Ec(k) => {
                let sk = p384::ecdsa::SigningKey::from(k);
                let sig: p384::ecdsa::Signature = sk.sign(input);
                Ok(sig.to_bytes().to_vec())
            }
        }
    }
}

/// Verifies a JWS signature against a public JWK (RS384 or ES384). Used by tests and by
/// `fhirhose keys` self-checks.
pub fn verify_with_jwk(jwk: &Value, input: &[u8], sig: &[u8]) -> bool {
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let f = |n: &str| {
                jwk.get(n)
                    .and_then(Value::as_str)
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                    .map(|b| BigUint::from_bytes_be(&b))
            };
            let (Some(n), Some(e)) = (f("n"), f("e")) else {
                return false;
            };
            let Ok(pk) = RsaPublicKey::new(n, e) else {
                return false;
            };
            let mut prefixed = SHA384_DIGEST_INFO.to_vec();
            prefixed.extend_from_slice(&Sha384::digest(input));
            pk.verify(Pkcs1v15Sign::new_unprefixed(), &prefixed, sig)
                .is_ok()
        }
        Some("EC") => {
            use p384::ecdsa::signature::Verifier as _;
            // JwkEcKey rejects members it does not know (kid, alg, use, key_ops).
            let minimal =
                json!({"kty": "EC", "crv": jwk.get("crv"), "x": jwk.get("x"), "y": jwk.get("y")});
            let Ok(pk) = p384::PublicKey::from_jwk_str(&minimal.to_string()) else {
                return false;
            };
            let Ok(sig) = p384::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            p384::ecdsa::VerifyingKey::from(pk)
                .verify(input, &sig)
                .is_ok()
        }
        _ => false,
    }
}

/// What [`generate_keys`] wrote.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GeneratedKeys {
    /// Algorithm.
    pub alg: Alg,
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// The private key, PKCS#8 PEM, mode 0600.
    pub private_key_path: PathBuf,
    /// The public JWKS to register with the EHR.
    pub jwks_path: PathBuf,
    /// The public JWKS.
    pub jwks: Value,
}

/// Generates a key pair into `out_dir`: `private_key.pem` (PKCS#8, mode 0600, never
/// overwritten) and `jwks.json` (public JWKS with `kid`, `alg`, `use`, `key_ops`).
pub fn generate_keys(alg: Alg, out_dir: &Path) -> Result<GeneratedKeys, AuthError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AuthError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let key = SigningKey::generate(alg)?;
    let private_key_path = out_dir.join("private_key.pem");
    let jwks_path = out_dir.join("jwks.json");
    write_private(&private_key_path, key.to_pkcs8_pem()?.as_bytes())?;
    let jwks = key.public_jwks();
    let pretty = serde_json::to_string_pretty(&jwks).unwrap_or_default();
    std::fs::write(&jwks_path, pretty + "\n").map_err(io(&jwks_path))?;
    Ok(GeneratedKeys {
        alg,
        kid: key.kid().to_owned(),
        private_key_path,
        jwks_path,
        jwks,
    })
}

/// Creates `path` (failing if it exists) readable by the owner only, and writes `bytes`.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    write_private_mode(path, bytes, false)
}

/// Like [`write_private`] but replaces an existing file atomically (refresh tokens).
pub(crate) fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    write_private_mode(path, bytes, true)
}

fn write_private_mode(path: &Path, bytes: &[u8], replace: bool) -> Result<(), AuthError> {
    use std::io::Write as _;
    let io = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    let target = if replace {
        let mut t = path.as_os_str().to_owned();
        t.push(".tmp");
        PathBuf::from(t)
    } else {
        path.to_owned()
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&target).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    if replace {
        std::fs::rename(&target, path).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es384_sign_verify_roundtrip_and_formats() {
        let k = SigningKey::generate(Alg::ES384).unwrap();
        let sig = k.sign(b"header.payload").unwrap();
        assert_eq!(sig.len(), 96, "JWS ES384 signature is raw r||s");
        let jwk = k.public_jwk();
        assert!(verify_with_jwk(&jwk, b"header.payload", &sig));
        assert!(!verify_with_jwk(&jwk, b"header.payloaX", &sig));
        assert_eq!(jwk["crv"], "P-384");
        assert!(jwk.get("d").is_none(), "public JWK has no private part");
        // SEC1 and PKCS#8 PEM parse back to the same key.
        let KeyMaterial::Ec(sk) = &k.material else {
            unreachable!()
        };
        let sec1 = sk.to_sec1_pem(LineEnding::LF).unwrap();
        let k2 = SigningKey::parse(&sec1, None).unwrap();
        assert_eq!(k2.kid(), k.kid());
        let k3 = SigningKey::parse(&k.to_pkcs8_pem().unwrap(), Some("mykid")).unwrap();
        assert_eq!(k3.kid(), "mykid");
        // A private JWK parses too.
        let mut priv_jwk: Value = serde_json::from_str(&sk.to_jwk_string()).unwrap();
        priv_jwk["kid"] = json!("jwk-kid");
        let k4 = SigningKey::parse(&json!({"keys": [priv_jwk]}).to_string(), None).unwrap();
        assert_eq!(k4.kid(), "jwk-kid");
        assert_eq!(k4.alg(), Alg::ES384);
    }

    #[test]
    fn rsa_pkcs1_pkcs8_and_jwk_parse_to_the_same_key() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PrivateKeyParts;
        let k = SigningKey::generate(Alg::RS384).unwrap();
        let KeyMaterial::Rsa(rk) = &k.material else {
            unreachable!()
        };
        let pkcs1 = rk.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        let from_pkcs1 = SigningKey::parse(&pkcs1, None).unwrap();
        assert_eq!(from_pkcs1.kid(), k.kid());
        let from_pkcs8 = SigningKey::parse(&k.to_pkcs8_pem().unwrap(), None).unwrap();
        assert_eq!(from_pkcs8.alg(), Alg::RS384);
        assert_eq!(from_pkcs8.kid(), k.kid());
        let big = |b: &BigUint| b64(&b.to_bytes_be());
        let primes = rk.primes();
        let jwk = json!({"kty": "RSA", "kid": "rsa-1", "n": big(rk.n()), "e": big(rk.e()),
            "d": big(rk.d()), "p": big(&primes[0]), "q": big(&primes[1])});
        let from_jwk = SigningKey::parse(&jwk.to_string(), None).unwrap();
        assert_eq!(from_jwk.kid(), "rsa-1");
        assert_eq!(from_jwk.thumbprint(), k.thumbprint());
        let sig = from_jwk.sign(b"x.y").unwrap();
        assert_eq!(sig.len(), 256);
        assert!(verify_with_jwk(&k.public_jwk(), b"x.y", &sig));
        assert!(SigningKey::parse("not a key", None).is_err());
    }

    #[test]
    fn debug_hides_material() {
        let k = SigningKey::generate(Alg::ES384).unwrap();
        let d = format!("{k:?}");
        assert!(d.contains("ES384") && !d.contains("material"), "{d}");
    }

    #[test]
    fn alg_parse() {
        assert_eq!("es384".parse::<Alg>().unwrap(), Alg::ES384);
        assert!("HS256".parse::<Alg>().is_err());
    }
}
