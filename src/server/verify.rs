//! Webhook authentication, over the raw body: a shared token (SendPulse
//! has no signatures), HMAC-SHA256 (`http.webhook`) and Ed25519
//! (HighLevel's `x-ghl-signature`) with timestamp freshness.

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
/// then signatures over the raw body and timestamps against replays.
pub fn verify(
    rule: &WebhookVerify,
    conn: &ResolvedConnection,
    headers: &HeaderMap,
    query_token: Option<&str>,
    body: &[u8],
) -> Result<(), VerifyError> {
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
        WebhookVerify::None | WebhookVerify::Token { .. } => Ok(()),
        _ if takes_unauthenticated(conn) && rule.field().is_none_or(|f| conn.get(f).is_none()) => {
            Ok(())
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
            Ok(())
        }
        WebhookVerify::Ed25519 {
            header: name,
            public_key,
            timestamp_field,
            max_age,
            ..
        } => {
            let key = field(public_key)?;
            let given = header(headers, name).ok_or_else(|| {
                VerifyError::Unauthorized(format!("missing `{name}` signature header"))
            })?;
            verify_ed25519(&key, &given, body)?;
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
            fresh(t.with_timezone(&chrono::Utc), age_limit, timestamp_field)
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
}
