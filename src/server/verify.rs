//! Webhook authentication, over the raw body: a shared token (SendPulse
//! has no signatures), HMAC-SHA256 (`http.webhook`) and Ed25519
//! (HighLevel's `x-ghl-signature`) with timestamp freshness.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::catalog::WebhookVerify;
use crate::connections::ResolvedConnection;
use crate::duration::parse_duration;

/// Why a delivery was refused (the message never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No token, signature or the wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// The connection lacks the value needed to check deliveries.
    #[error("connection `{connection}` has no `{field}`, so its deliveries cannot be checked")]
    NotConfigured {
        /// Connection.
        connection: String,
        /// Missing field.
        field: String,
    },
}

/// Checks a delivery before its body is parsed as events.
pub fn verify(
    rule: &WebhookVerify,
    conn: &ResolvedConnection,
    headers: &HeaderMap,
    query_token: Option<&str>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let field = |name: &str| {
        conn.get(name)
            .map(|v| v.expose().to_string())
            .ok_or_else(|| VerifyError::NotConfigured {
                connection: conn.name.clone(),
                field: name.to_string(),
            })
    };
    match rule {
        WebhookVerify::None => Ok(()),
        // A connection without a token accepts deliveries unchecked (DESIGN:
        // "where the connection has a webhook_token").
        WebhookVerify::Token { token } if conn.get(token).is_none() => Ok(()),
        WebhookVerify::Hmac { secret, .. } if conn.get(secret).is_none() => Ok(()),
        WebhookVerify::Token { token } => {
            let expected = field(token)?;
            let given = query_token
                .map(str::to_string)
                .or_else(|| header(headers, "x-patchbay-token"))
                .ok_or_else(|| {
                    VerifyError::Unauthorized(
                        "missing token: pass `?token=` or the `X-Patchbay-Token` header".into(),
                    )
                })?;
            if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                Ok(())
            } else {
                Err(VerifyError::Unauthorized("wrong token".into()))
            }
        }
        WebhookVerify::Hmac {
            header: name,
            secret,
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
            mac.update(body);
            mac.verify_slice(&sig).map_err(|_| {
                VerifyError::Unauthorized("HMAC signature does not match the body".into())
            })
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
            // Replays: an old signed body is refused.
            let age_limit = parse_duration(max_age).unwrap_or(Duration::from_secs(300));
            let payload: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let Some(ts) = payload.get(timestamp_field).and_then(|v| v.as_str()) {
                let t = chrono::DateTime::parse_from_rfc3339(ts).map_err(|_| {
                    VerifyError::Unauthorized(format!(
                        "`{timestamp_field}` is not an ISO timestamp"
                    ))
                })?;
                let age = chrono::Utc::now().signed_duration_since(t);
                if age.num_seconds() > age_limit.as_secs() as i64 {
                    return Err(VerifyError::Unauthorized(format!(
                        "delivery too old: `{timestamp_field}` is {}s ago",
                        age.num_seconds()
                    )));
                }
            }
            Ok(())
        }
    }
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
        // Without a token configured, deliveries are not checked.
        assert!(verify(&rule, &conn(&[]), &HeaderMap::new(), None, b"").is_ok());
    }

    #[test]
    fn hmac_over_the_raw_body() {
        use hmac::{Hmac, Mac};
        let rule = WebhookVerify::Hmac {
            header: "x-signature-256".into(),
            secret: "hmac_secret".into(),
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
    }
}
