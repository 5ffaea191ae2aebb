//! Webhook authentication, over the raw body: a shared token (SendPulse
//! has no signatures), HMAC-SHA256 (`http.webhook`) and Ed25519
//! (HighLevel's `x-ghl-signature`) with timestamp freshness, or in its
//! place a deprecated RSA signature (HighLevel's legacy `x-wh-signature`).

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::catalog::WebhookVerify;
use crate::connections::{ResolvedConnection, WEBHOOK_AUTH};
use crate::duration::parse_duration;

/// Why a delivery was refused (the message never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No token, signature or the wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// The connection lacks the value needed to check deliveries, so they
    /// are refused (fail closed).
    #[error("connection `{connection}` has no `{field}`, so its deliveries cannot be checked and are refused; set it, or `webhook_auth: none` to take them without authentication")]
    NotConfigured {
        /// Connection.
        connection: String,
        /// Missing field.
        field: String,
    },
    /// The connector checks nothing and the connection did not say it takes
    /// unauthenticated deliveries.
    #[error("connection `{connection}`: its connector does not authenticate webhook deliveries, so they are refused; set `webhook_auth: none` on the connection to take them anyway")]
    NoCheck {
        /// Connection.
        connection: String,
    },
}

/// How a delivery that passed was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// By the connector's check (or taken unauthenticated, as configured).
    Checked,
    /// By a deprecated signature the connector still accepts in place of
    /// its current one.
    Legacy {
        /// The header the signature came in (`x-wh-signature`).
        header: String,
        /// The header of the current signature (`x-ghl-signature`).
        instead_of: String,
    },
}

/// How far in the future a signed timestamp may be (clock skew).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(60);

/// Whether a connection said `webhook_auth: none`.
pub fn takes_unauthenticated(conn: &ResolvedConnection) -> bool {
    conn.get(WEBHOOK_AUTH).is_some_and(|v| v.expose() == "none")
}

/// Checks a delivery's headers before its body is read, where the scheme
/// allows: a token (query or header) is checked whole; a signature scheme
/// only for the presence of its header and the connection's key.
pub fn precheck(
    rule: &WebhookVerify,
    conn: &ResolvedConnection,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), VerifyError> {
    match rule.field() {
        _ if takes_unauthenticated(conn) && rule.field().is_none_or(|f| conn.get(f).is_none()) => {
            return Ok(())
        }
        None => {
            return Err(VerifyError::NoCheck {
                connection: conn.name.clone(),
            })
        }
        Some(f) if conn.get(f).is_none() => {
            return Err(VerifyError::NotConfigured {
                connection: conn.name.clone(),
                field: f.to_string(),
            })
        }
        Some(_) => {}
    }
    match rule {
        WebhookVerify::None => Ok(()),
        WebhookVerify::Token { token } => {
            let expected = conn.get(token).map(|v| v.expose()).unwrap_or_default();
            let given = query_token
                .map(str::to_string)
                .or_else(|| header(headers, "x-patchbay-token"))
                .ok_or_else(|| {
                    VerifyError::Unauthorized(
                        "missing token: pass `?token=` or the `X-Patchbay-Token` header".into(),
                    )
                })?;
            if !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                Ok(())
            } else {
                Err(VerifyError::Unauthorized("wrong token".into()))
            }
        }
        WebhookVerify::Ed25519 {
            header: name,
            legacy: Some(legacy),
            ..
        } => {
            if header(headers, name).is_none() && header(headers, &legacy.header).is_none() {
                return Err(VerifyError::Unauthorized(format!(
                    "missing `{name}` signature header (or the legacy `{}`)",
                    legacy.header
                )));
            }
            Ok(())
        }
        WebhookVerify::Hmac { header: name, .. } | WebhookVerify::Ed25519 { header: name, .. } => {
            if header(headers, name).is_none() {
                return Err(VerifyError::Unauthorized(format!(
                    "missing `{name}` signature header"
                )));
            }
            Ok(())
        }
    }
}

/// Checks a delivery before its body is parsed as events: [`precheck`],
/// then signatures over the raw body and timestamps against replays. A
/// delivery with both a current and a legacy signature is checked on the
/// current one only.
pub fn verify(
    rule: &WebhookVerify,
    conn: &ResolvedConnection,
    headers: &HeaderMap,
    query_token: Option<&str>,
    body: &[u8],
) -> Result<Verified, VerifyError> {
    precheck(rule, conn, headers, query_token)?;
    let field = |name: &str| {
        conn.get(name)
            .map(|v| v.expose().to_string())
            .ok_or_else(|| VerifyError::NotConfigured {
                connection: conn.name.clone(),
                field: name.to_string(),
            })
    };
    match rule {
        // Checked whole by `precheck` (or taken unauthenticated).
        WebhookVerify::None | WebhookVerify::Token { .. } => Ok(Verified::Checked),
        _ if takes_unauthenticated(conn) && rule.field().is_none_or(|f| conn.get(f).is_none()) => {
            Ok(Verified::Checked)
        }
        WebhookVerify::Hmac {
            header: name,
            secret,
            timestamp_header,
            max_age,
        } => {
            use hmac::{Hmac, Mac};
            let key = field(secret)?;
            let given = header(headers, name).ok_or_else(|| {
                VerifyError::Unauthorized(format!("missing `{name}` signature header"))
            })?;
            let hex_sig = given.strip_prefix("sha256=").unwrap_or(&given);
            let sig = hex_decode(hex_sig).ok_or_else(|| {
                VerifyError::Unauthorized(format!("`{name}` is not a hex HMAC-SHA256"))
            })?;
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
                .expect("HMAC takes any key length");
            // With a timestamp, the signature covers `{timestamp}.{body}`:
            // a captured delivery cannot be replayed with the header
            // dropped, nor with a fresher one.
            let stamp = timestamp_header
                .as_deref()
                .and_then(|h| header(headers, h).map(|v| (h, v)));
            if let Some((_, ts)) = &stamp {
                mac.update(ts.as_bytes());
                mac.update(b".");
            }
            mac.update(body);
            mac.verify_slice(&sig).map_err(|_| {
                VerifyError::Unauthorized("HMAC signature does not match the body".into())
            })?;
            if let Some((h, ts)) = stamp {
                let secs: i64 = ts.trim().parse().map_err(|_| {
                    VerifyError::Unauthorized(format!("`{h}` is not a Unix time in seconds"))
                })?;
                let at = chrono::DateTime::from_timestamp(secs, 0)
                    .ok_or_else(|| VerifyError::Unauthorized(format!("`{h}` is out of range")))?;
                let window = max_age
                    .as_deref()
                    .and_then(|m| parse_duration(m).ok())
                    .unwrap_or(Duration::from_secs(300));
                fresh(at, window, h)?;
            }
            Ok(Verified::Checked)
        }
        WebhookVerify::Ed25519 {
            header: name,
            public_key,
            timestamp_field,
            max_age,
            legacy,
            ..
        } => {
            let legacy_signature = legacy
                .as_ref()
                .filter(|_| header(headers, name).is_none())
                .and_then(|l| header(headers, &l.header).map(|sig| (l, sig)));
            let verified = match legacy_signature {
                Some((l, sig)) => {
                    let key = conn
                        .get(&l.public_key)
                        .map(|v| v.expose().to_string())
                        .or_else(|| l.default_public_key.clone())
                        .ok_or_else(|| VerifyError::NotConfigured {
                            connection: conn.name.clone(),
                            field: l.public_key.clone(),
                        })?;
                    verify_rsa(&key, &l.header, &sig, body)?;
                    Verified::Legacy {
                        header: l.header.clone(),
                        instead_of: name.clone(),
                    }
                }
                None => {
                    let key = field(public_key)?;
                    let given = header(headers, name).ok_or_else(|| {
                        VerifyError::Unauthorized(format!("missing `{name}` signature header"))
                    })?;
                    verify_ed25519(&key, &given, body)?;
                    Verified::Checked
                }
            };
            // Replays: an old signed body is refused, and so is one without
            // a timestamp (it could be replayed forever).
            let age_limit = parse_duration(max_age).unwrap_or(Duration::from_secs(300));
            let payload: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let ts = payload
                .get(timestamp_field)
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    VerifyError::Unauthorized(format!(
                        "signed delivery without `{timestamp_field}`: refused, it could be replayed"
                    ))
                })?;
            let t = chrono::DateTime::parse_from_rfc3339(ts).map_err(|_| {
                VerifyError::Unauthorized(format!("`{timestamp_field}` is not an ISO timestamp"))
            })?;
            fresh(t.with_timezone(&chrono::Utc), age_limit, timestamp_field)?;
            Ok(verified)
        }
    }
}

/// A signed time is no older than `window` and at most
/// [`MAX_FUTURE_SKEW`] ahead.
fn fresh(
    at: chrono::DateTime<chrono::Utc>,
    window: Duration,
    what: &str,
) -> Result<(), VerifyError> {
    let age = chrono::Utc::now().signed_duration_since(at).num_seconds();
    if age > window.as_secs().min(i64::MAX as u64) as i64 {
        return Err(VerifyError::Unauthorized(format!(
            "delivery too old: `{what}` is {age}s ago"
        )));
    }
    if -age > MAX_FUTURE_SKEW.as_secs() as i64 {
        return Err(VerifyError::Unauthorized(format!(
            "delivery from the future: `{what}` is {}s ahead",
            -age
        )));
    }
    Ok(())
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The OID of `rsaEncryption` keys in a SubjectPublicKeyInfo.
const RSA_ENCRYPTION: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// An RSA public key as ring reads it (PKCS#1 `RSAPublicKey` DER), from a
/// PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1)
/// block, or from the base64 of a SubjectPublicKeyInfo without the PEM
/// lines. The error says what is wrong.
pub fn rsa_public_key(text: &str) -> Result<Vec<u8>, String> {
    use spki::der::Decode;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = text.trim();
    let (label, body) = match text.strip_prefix("-----BEGIN ") {
        Some(rest) => {
            let (label, rest) = rest
                .split_once("-----")
                .ok_or("a PEM block starts with `-----BEGIN <label>-----`")?;
            let end = format!("-----END {label}-----");
            let (body, _) = rest
                .split_once(&end)
                .ok_or_else(|| format!("the PEM block has no `{end}` line"))?;
            (label, body)
        }
        None => ("PUBLIC KEY", text),
    };
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = b64
        .decode(compact)
        .map_err(|_| "the key is not valid base64 (PEM)".to_string())?;
    match label {
        "RSA PUBLIC KEY" => Ok(der),
        "PUBLIC KEY" => {
            let info = spki::SubjectPublicKeyInfoRef::from_der(&der)
                .map_err(|e| format!("the key is not a SubjectPublicKeyInfo: {e}"))?;
            if info.algorithm.oid != RSA_ENCRYPTION {
                return Err(format!(
                    "the key is not an RSA key (algorithm {})",
                    info.algorithm.oid
                ));
            }
            info.subject_public_key
                .as_bytes()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "the key's bit string is not whole bytes".to_string())
        }
        other => Err(format!(
            "a PEM `{other}` block is not a public key (`PUBLIC KEY` or `RSA PUBLIC KEY`)"
        )),
    }
}

/// Verifies a base64 RSA PKCS#1 v1.5 SHA-256 signature of the raw body
/// (2048- to 8192-bit keys).
fn verify_rsa(key: &str, name: &str, sig_b64: &str, body: &[u8]) -> Result<(), VerifyError> {
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    let der = rsa_public_key(key).map_err(|e| {
        VerifyError::Unauthorized(format!("the public key for `{name}` is unusable: {e}"))
    })?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig_b64.trim())
        .map_err(|_| VerifyError::Unauthorized(format!("`{name}` is not base64")))?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
        .verify(body, &sig)
        .map_err(|_| {
            VerifyError::Unauthorized(format!(
                "RSA signature in the legacy `{name}` does not match the body"
            ))
        })
}

/// Verifies a base64 Ed25519 signature with a public key given as SPKI DER
/// (base64) or as the raw 32 bytes (base64).
fn verify_ed25519(key_b64: &str, sig_b64: &str, body: &[u8]) -> Result<(), VerifyError> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key_bytes = b64.decode(key_b64.trim()).map_err(|_| {
        VerifyError::Unauthorized("the connection's public key is not base64".into())
    })?;
    let key = VerifyingKey::from_public_key_der(&key_bytes)
        .ok()
        .or_else(|| {
            <[u8; 32]>::try_from(key_bytes.as_slice())
                .ok()
                .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        })
        .ok_or_else(|| {
            VerifyError::Unauthorized("the connection's public key is not an Ed25519 key".into())
        })?;
    let sig = b64
        .decode(sig_b64.trim())
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or_else(|| {
            VerifyError::Unauthorized("the signature is not a base64 Ed25519 signature".into())
        })?;
    key.verify(body, &sig)
        .map_err(|_| VerifyError::Unauthorized("Ed25519 signature does not match the body".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::FieldValue;
    use crate::secret::Secret;

    fn conn(fields: &[(&str, &str)]) -> ResolvedConnection {
        ResolvedConnection {
            name: "c".into(),
            connector: "x".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), FieldValue::Secret(Secret::new(*v))))
                .collect(),
            rate_limits: None,
            concurrency: None,
        }
    }

    #[test]
    fn token_from_query_or_header() {
        let rule = WebhookVerify::Token {
            token: "webhook_token".into(),
        };
        let c = conn(&[("webhook_token", "s3cret")]);
        let mut h = HeaderMap::new();
        assert!(verify(&rule, &c, &h, Some("s3cret"), b"").is_ok());
        assert!(matches!(
            verify(&rule, &c, &h, Some("nope"), b""),
            Err(VerifyError::Unauthorized(_))
        ));
        h.insert("x-patchbay-token", "s3cret".parse().unwrap());
        assert!(verify(&rule, &c, &h, None, b"").is_ok());
    }

    #[test]
    fn without_a_secret_deliveries_are_refused_unless_the_connection_says_none() {
        let token = WebhookVerify::Token {
            token: "webhook_token".into(),
        };
        let e = verify(&token, &conn(&[]), &HeaderMap::new(), None, b"").unwrap_err();
        assert!(matches!(e, VerifyError::NotConfigured { .. }), "{e}");
        assert!(e.to_string().contains("webhook_auth: none"), "{e}");
        let e = verify(
            &WebhookVerify::None,
            &conn(&[]),
            &HeaderMap::new(),
            None,
            b"",
        )
        .unwrap_err();
        assert!(matches!(e, VerifyError::NoCheck { .. }), "{e}");
        let open = conn(&[("webhook_auth", "none")]);
        for rule in [token, WebhookVerify::None, hmac_rule()] {
            assert!(verify(&rule, &open, &HeaderMap::new(), None, b"{}").is_ok());
        }
    }

    fn hmac_rule() -> WebhookVerify {
        WebhookVerify::Hmac {
            header: "x-signature-256".into(),
            secret: "hmac_secret".into(),
            timestamp_header: Some("x-signature-timestamp".into()),
            max_age: Some("5m".into()),
        }
    }

    fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        for p in parts {
            mac.update(p);
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn hmac_with_a_timestamp_signs_it_and_refuses_stale_future_or_stripped_ones() {
        let rule = hmac_rule();
        let c = conn(&[("hmac_secret", "k")]);
        let body = b"{\"a\":1}";
        let signed = |ts: i64| {
            let mut h = HeaderMap::new();
            let ts = ts.to_string();
            let sig = hmac_hex(b"k", &[ts.as_bytes(), b".", body]);
            h.insert("x-signature-256", format!("sha256={sig}").parse().unwrap());
            h.insert("x-signature-timestamp", ts.parse().unwrap());
            h
        };
        let now = chrono::Utc::now().timestamp();
        assert!(verify(&rule, &c, &signed(now), None, body).is_ok());
        let e = verify(&rule, &c, &signed(now - 3600), None, body).unwrap_err();
        assert!(e.to_string().contains("too old"), "{e}");
        let e = verify(&rule, &c, &signed(now + 3600), None, body).unwrap_err();
        assert!(e.to_string().contains("from the future"), "{e}");
        // Dropping the timestamp of a captured delivery breaks its signature.
        let mut stripped = signed(now - 3600);
        stripped.remove("x-signature-timestamp");
        assert!(verify(&rule, &c, &stripped, None, body).is_err());
        // A sender without timestamps still verifies (body-only HMAC).
        let mut plain = HeaderMap::new();
        plain.insert("x-signature-256", hmac_hex(b"k", &[body]).parse().unwrap());
        assert!(verify(&rule, &c, &plain, None, body).is_ok());
    }

    #[test]
    fn hmac_over_the_raw_body() {
        use hmac::{Hmac, Mac};
        let rule = WebhookVerify::Hmac {
            header: "x-signature-256".into(),
            secret: "hmac_secret".into(),
            timestamp_header: None,
            max_age: None,
        };
        let c = conn(&[("hmac_secret", "k")]);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"{\"a\":1}");
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut h = HeaderMap::new();
        h.insert("x-signature-256", format!("sha256={sig}").parse().unwrap());
        assert!(verify(&rule, &c, &h, None, b"{\"a\":1}").is_ok());
        assert!(
            verify(&rule, &c, &h, None, b"{\"a\": 1}").is_err(),
            "re-serialised body must not verify"
        );
    }

    #[test]
    fn ed25519_signature_and_freshness() {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        use ed25519_dalek::{Signer, SigningKey};
        let b64 = base64::engine::general_purpose::STANDARD;
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let spki = b64.encode(sk.verifying_key().to_public_key_der().unwrap().as_bytes());
        let rule = WebhookVerify::Ed25519 {
            header: "x-ghl-signature".into(),
            public_key: "webhook_public_key".into(),
            timestamp_field: "timestamp".into(),
            id_field: "webhookId".into(),
            max_age: "5m".into(),
            legacy: None,
        };
        let c = conn(&[("webhook_public_key", &spki)]);
        let fresh = format!(
            "{{\"type\":\"ContactCreate\",\"timestamp\":\"{}\"}}",
            chrono::Utc::now().to_rfc3339()
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-ghl-signature",
            b64.encode(sk.sign(fresh.as_bytes()).to_bytes())
                .parse()
                .unwrap(),
        );
        assert!(verify(&rule, &c, &h, None, fresh.as_bytes()).is_ok());
        assert!(verify(&rule, &c, &h, None, b"{}").is_err());
        let old = "{\"type\":\"ContactCreate\",\"timestamp\":\"2020-01-01T00:00:00Z\"}";
        h.insert(
            "x-ghl-signature",
            b64.encode(sk.sign(old.as_bytes()).to_bytes())
                .parse()
                .unwrap(),
        );
        let e = verify(&rule, &c, &h, None, old.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("too old"), "{e}");
        let sign = |body: &str, h: &mut HeaderMap| {
            h.insert(
                "x-ghl-signature",
                b64.encode(sk.sign(body.as_bytes()).to_bytes())
                    .parse()
                    .unwrap(),
            );
        };
        let unstamped = "{\"type\":\"ContactCreate\"}";
        sign(unstamped, &mut h);
        let e = verify(&rule, &c, &h, None, unstamped.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("without `timestamp`"), "{e}");
        let future = format!(
            "{{\"type\":\"ContactCreate\",\"timestamp\":\"{}\"}}",
            (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
        );
        sign(&future, &mut h);
        let e = verify(&rule, &c, &h, None, future.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("from the future"), "{e}");
    }

    const TEST_RSA_PUBLIC: &str = include_str!("../../tests/keys/ghl-legacy-webhook.pub.pem");
    const TEST_RSA_PRIVATE: &str = include_str!("../../tests/keys/ghl-legacy-webhook.key.pem");

    /// The base64 RSA PKCS#1 v1.5 SHA-256 signature of `body` with the test key.
    fn rsa_sign(body: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem: String = TEST_RSA_PRIVATE
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&b64.decode(pem).unwrap()).unwrap();
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            body,
            &mut sig,
        )
        .unwrap();
        b64.encode(sig)
    }

    fn legacy_rule(default_key: Option<&str>) -> WebhookVerify {
        WebhookVerify::Ed25519 {
            header: "x-ghl-signature".into(),
            public_key: "webhook_public_key".into(),
            timestamp_field: "timestamp".into(),
            id_field: "webhookId".into(),
            max_age: "5m".into(),
            legacy: Some(crate::catalog::LegacyRsa {
                header: "x-wh-signature".into(),
                public_key: "webhook_rsa_public_key".into(),
                default_public_key: default_key.map(str::to_string),
            }),
        }
    }

    fn ed25519_key() -> (ed25519_dalek::SigningKey, String) {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let spki = base64::engine::general_purpose::STANDARD
            .encode(sk.verifying_key().to_public_key_der().unwrap().as_bytes());
        (sk, spki)
    }

    fn stamped() -> String {
        format!(
            "{{\"type\":\"ContactCreate\",\"timestamp\":\"{}\",\"webhookId\":\"w1\"}}",
            chrono::Utc::now().to_rfc3339()
        )
    }

    #[test]
    fn a_legacy_rsa_signature_is_taken_only_without_the_current_one() {
        use ed25519_dalek::Signer;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (sk, spki) = ed25519_key();
        let c = conn(&[
            ("webhook_public_key", &spki),
            ("webhook_rsa_public_key", TEST_RSA_PUBLIC),
        ]);
        let rule = legacy_rule(None);
        let body = stamped();
        let legacy = |sig: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-wh-signature", sig.parse().unwrap());
            h
        };
        // Only the legacy signature: checked, and said to be legacy.
        let got = verify(
            &rule,
            &c,
            &legacy(&rsa_sign(body.as_bytes())),
            None,
            body.as_bytes(),
        );
        assert_eq!(
            got,
            Ok(Verified::Legacy {
                header: "x-wh-signature".into(),
                instead_of: "x-ghl-signature".into()
            })
        );
        // A body changed after signing is refused, with what failed.
        let tampered = body.replace("ContactCreate", "ContactDelete");
        let e = verify(
            &rule,
            &c,
            &legacy(&rsa_sign(body.as_bytes())),
            None,
            tampered.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            VerifyError::Unauthorized(
                "RSA signature in the legacy `x-wh-signature` does not match the body".into()
            )
        );
        let e = verify(&rule, &c, &legacy("%%%"), None, body.as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "`x-wh-signature` is not base64");
        // Signed by the legacy key but stale: the timestamp rule still holds.
        let old = "{\"type\":\"ContactCreate\",\"timestamp\":\"2020-01-01T00:00:00Z\"}";
        let e = verify(
            &rule,
            &c,
            &legacy(&rsa_sign(old.as_bytes())),
            None,
            old.as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("too old"), "{e}");
        // With both headers, the current one decides: a good Ed25519
        // signature passes whatever the legacy one says, a bad one fails
        // even next to a good legacy one.
        let mut both = legacy("bm90IGEgc2lnbmF0dXJl");
        both.insert(
            "x-ghl-signature",
            b64.encode(sk.sign(body.as_bytes()).to_bytes())
                .parse()
                .unwrap(),
        );
        assert_eq!(
            verify(&rule, &c, &both, None, body.as_bytes()),
            Ok(Verified::Checked)
        );
        let mut both = legacy(&rsa_sign(body.as_bytes()));
        both.insert(
            "x-ghl-signature",
            b64.encode(sk.sign(b"other").to_bytes()).parse().unwrap(),
        );
        let e = verify(&rule, &c, &both, None, body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("Ed25519"), "{e}");
        // Neither header: refused before the body is read, naming both.
        let e = precheck(&rule, &c, &HeaderMap::new(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing `x-ghl-signature` signature header (or the legacy `x-wh-signature`)"
        );
    }

    #[test]
    fn the_legacy_key_defaults_to_the_catalogs_and_a_bad_key_says_so() {
        let (_, spki) = ed25519_key();
        let body = stamped();
        let mut h = HeaderMap::new();
        h.insert("x-wh-signature", rsa_sign(body.as_bytes()).parse().unwrap());
        let only_ed = conn(&[("webhook_public_key", &spki)]);
        // The connection sets no RSA key: the rule's default is used.
        assert!(verify(
            &legacy_rule(Some(TEST_RSA_PUBLIC)),
            &only_ed,
            &h,
            None,
            body.as_bytes()
        )
        .is_ok());
        // HighLevel's published key does not verify the test key's signature.
        let ghl = crate::catalog::Catalog::builtin();
        let rule = ghl
            .connector("ghl")
            .unwrap()
            .webhook
            .clone()
            .unwrap()
            .verify;
        let e = verify(&rule, &only_ed, &h, None, body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("does not match the body"), "{e}");
        // No default and no key in the connection: not configured.
        let e = verify(&legacy_rule(None), &only_ed, &h, None, body.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, VerifyError::NotConfigured { field, .. } if field == "webhook_rsa_public_key"),
            "{e}"
        );
        let bad = conn(&[
            ("webhook_public_key", &spki),
            ("webhook_rsa_public_key", &spki),
        ]);
        let e = verify(&legacy_rule(None), &bad, &h, None, body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("is not an RSA key"), "{e}");
    }

    #[test]
    fn rsa_public_keys_are_read_from_pem_or_bare_base64() {
        let pkcs1 = rsa_public_key(TEST_RSA_PUBLIC).unwrap();
        let bare: String = TEST_RSA_PUBLIC
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert_eq!(rsa_public_key(&bare).unwrap(), pkcs1);
        let b64 = base64::engine::general_purpose::STANDARD;
        let rsa_pem = format!(
            "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
            b64.encode(&pkcs1)
        );
        assert_eq!(rsa_public_key(&rsa_pem).unwrap(), pkcs1);
        for (bad, says) in [
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n",
                "no `-----END PUBLIC KEY-----`",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                "not a public key",
            ),
            ("not base64!", "not valid base64"),
            ("AAAA", "not a SubjectPublicKeyInfo"),
        ] {
            let e = rsa_public_key(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
