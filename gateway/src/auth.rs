//! Bearer tokens.
//!
//! Merchants' and shoppers' tokens are signed by the server, so checking
//! one is a pure computation (no lookup, no lock):
//! `v2.<id>.<issued>.<expiry>.<mac>` where `<id>` is the account id as the
//! API spells it (`m_1`, `s_2a`, so the prefix carries the role),
//! `<issued>` is when it was issued in Unix milliseconds, `<expiry>` is
//! Unix seconds and `<mac>` is HMAC-SHA256 over everything before it with
//! the deployment's secret, in URL-safe base64. Every node that shares the
//! secret accepts the token. The issue time lets an account's tokens be
//! revoked without a list of them: the gateway refuses a token issued
//! before the account's not-before time (`flashsale_engine::rules::tokens`,
//! checked in `App::caller`). Tokens of the earlier form
//! `v1.<id>.<expiry>.<mac>` still verify, with no issue time: older than
//! any revocation.
//!
//! In multi-node mode ids are numbered by Redis, which may lose its data
//! and number from 1 again; so a token there also names the deployment's
//! **epoch** (a random 64-bit number kept in Redis, new whenever Redis
//! starts empty): `v2.<id>.<issued>.<expiry>.<epoch in hex>.<mac>`, the
//! MAC covering the epoch too. A token of another epoch is refused
//! (`401`): its id may now name someone else. One node has no epoch (0),
//! and its tokens keep the shorter form.
//!
//! The admin token comes from configuration. It is compared in constant
//! time by comparing MACs: the presented token's MAC against the configured
//! one's, computed once at start, so neither its content nor its length
//! leaks through timing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashsale_engine::{Account, MerchantId, ShopperId, Timestamp};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// The version this build issues: with the issue time.
const TOKEN_VERSION: &str = "v2";
/// The version before it, still verified: without the issue time.
const TOKEN_VERSION_1: &str = "v1";
/// Bytes of an HMAC-SHA256 tag.
const MAC_BYTES: usize = 32;
/// Longest token text looked at; longer ones are refused unread.
const TOKEN_BYTES_MAX: usize = 256;
/// Why a token of another epoch than the deployment's is refused (`401`),
/// here and when a store step finds the token's account made in another
/// epoch (`flashsale_redis::Error::EarlierEpoch`, mapped in `crate::error`).
pub(crate) const EARLIER_EPOCH: &str = "the token is of an earlier epoch of this deployment (its \
     Redis lost its data, and the token's id may name someone else now); get a new token";

/// The epoch of a deployment without one (one node): its tokens carry none.
pub use flashsale_redis::NO_EPOCH;
/// Domain separation between the admin comparison and signed tokens.
const ADMIN_CONTEXT: &[u8] = b"flashsale admin token\0";
/// Domain of [`Signer::fingerprint`]'s MAC.
const FINGERPRINT_CONTEXT: &[u8] = b"flashsale deployment fingerprint\0";

/// Who is calling, as a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Merchant(MerchantId),
    Shopper(ShopperId),
}

impl Caller {
    /// The account whose token this is; `None` for the admin.
    pub fn account(self) -> Option<Account> {
        match self {
            Caller::Admin => None,
            Caller::Merchant(id) => Some(Account::Merchant(id)),
            Caller::Shopper(id) => Some(Account::Shopper(id)),
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub caller: Caller,
    /// When a signed token was issued (Unix ms); `None` for a `v1` token
    /// and for the admin token (which no revocation concerns).
    pub issued_at: Option<Timestamp>,
}

/// Issues and checks tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    /// The keyed MAC state, cloned per token so the key is hashed once.
    keyed: HmacSha256,
    admin_mac: [u8; MAC_BYTES],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    pub fn new(secret: &[u8], admin_token: &str) -> Signer {
        // invariant: HMAC takes a key of any length.
        let keyed = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
        let admin_mac = keyed
            .clone()
            .chain_update(ADMIN_CONTEXT)
            .chain_update(admin_token.as_bytes())
            .finalize()
            .into_bytes()
            .into();
        Signer { keyed, admin_mac }
    }

    /// 16 hex digits that are the same for every node given the same
    /// secret and admin token, and tell nothing of either (an HMAC under
    /// the secret): multi-node mode keeps it in Redis so that a node
    /// started with another `--secret` or `--admin-token` is refused at
    /// start instead of answering its peers' tokens with `401`.
    pub fn fingerprint(&self) -> String {
        let mac = self
            .keyed
            .clone()
            .chain_update(FINGERPRINT_CONTEXT)
            .chain_update(self.admin_mac)
            .finalize()
            .into_bytes();
        mac.iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// A token for a merchant or shopper, issued at `issued_at` (Unix ms)
    /// and valid until `expires_at` (Unix seconds) in the deployment's
    /// `epoch` (0: none, one node). Admin tokens are configured, never
    /// issued.
    pub fn issue(
        &self,
        caller: Caller,
        issued_at: Timestamp,
        expires_at: i64,
        epoch: u64,
    ) -> String {
        let mut payload = match caller {
            Caller::Merchant(id) => format!("{TOKEN_VERSION}.{id}"),
            Caller::Shopper(id) => format!("{TOKEN_VERSION}.{id}"),
            Caller::Admin => unreachable!("admin tokens are configured, not issued"),
        };
        payload.push_str(&format!(".{}.{expires_at}", issued_at.millis()));
        if epoch != NO_EPOCH {
            payload.push_str(&format!(".{epoch:016x}"));
        }
        let mac = self
            .keyed
            .clone()
            .chain_update(payload.as_bytes())
            .finalize()
            .into_bytes();
        let mut token = payload;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac, &mut token);
        token
    }

    /// Checks a presented token at `now` (Unix seconds) in the
    /// deployment's `epoch` (0: none): who it is for and when it was
    /// issued. Whether the account revoked it is the caller's check.
    /// Errors: [`Error::Unauthorized`] for a token that is forged,
    /// expired, or of another epoch.
    pub fn verify(&self, token: &str, now: i64, epoch: u64) -> Result<Verified, Error> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(Error::Unauthorized("the token is not valid"));
        }
        if let Some(verified) = self.verify_signed(token, now, epoch)? {
            return Ok(verified);
        }
        let admin = self
            .keyed
            .clone()
            .chain_update(ADMIN_CONTEXT)
            .chain_update(token.as_bytes());
        match admin.verify_slice(&self.admin_mac) {
            Ok(()) => Ok(Verified {
                caller: Caller::Admin,
                issued_at: None,
            }),
            Err(_) => Err(Error::Unauthorized("the token is not valid")),
        }
    }

    /// `Ok(None)` when the text is not shaped like a signed token (it may
    /// be the admin token); an error when it is but does not verify.
    fn verify_signed(&self, token: &str, now: i64, epoch: u64) -> Result<Option<Verified>, Error> {
        let Some((payload, mac_text)) = token.rsplit_once('.') else {
            return Ok(None);
        };
        let mut parts = payload.split('.');
        let (Some(version), Some(id)) = (parts.next(), parts.next()) else {
            return Ok(None);
        };
        let issued = match version {
            TOKEN_VERSION => parts.next(),
            TOKEN_VERSION_1 => None,
            _ => return Ok(None),
        };
        let (Some(expiry), token_epoch, None) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        if version == TOKEN_VERSION && issued.is_none() {
            return Ok(None);
        }
        let forged = Error::Unauthorized("the token is not valid");
        let mut mac = [0u8; MAC_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(mac_text, &mut mac) {
            Ok(MAC_BYTES) => {}
            _ => return Err(forged),
        }
        self.keyed
            .clone()
            .chain_update(payload.as_bytes())
            .verify_slice(&mac)
            .map_err(|_| Error::Unauthorized("the token is not valid"))?;
        // Signed by us: what follows parses unless the secret leaked.
        let expiry: i64 = expiry.parse().map_err(|_| forged)?;
        let issued_at = match issued {
            None => None,
            Some(millis) => {
                Some(Timestamp(millis.parse().map_err(|_| {
                    Error::Unauthorized("the token is not valid")
                })?))
            }
        };
        let token_epoch = match token_epoch {
            None => NO_EPOCH,
            Some(hex) => u64::from_str_radix(hex, 16)
                .map_err(|_| Error::Unauthorized("the token is not valid"))?,
        };
        if token_epoch != epoch {
            return Err(Error::Unauthorized(EARLIER_EPOCH));
        }
        if expiry <= now {
            return Err(Error::Unauthorized("the token has expired"));
        }
        let caller = if let Ok(id) = id.parse::<ShopperId>() {
            Caller::Shopper(id)
        } else if let Ok(id) = id.parse::<MerchantId>() {
            Caller::Merchant(id)
        } else {
            return Err(Error::Unauthorized("the token is not valid"));
        };
        Ok(Some(Verified { caller, issued_at }))
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;
    /// A token's issue time in these tests, in ms: a second before `NOW`.
    const ISSUED: Timestamp = Timestamp((NOW - 1) * 1000);

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef0123456789abcdef", "the-admin")
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let signer = signer();
        let shopper = Caller::Shopper(ShopperId(42));
        let token = signer.issue(shopper, ISSUED, NOW + 60, NO_EPOCH);
        assert_eq!(
            signer.verify(&token, NOW, NO_EPOCH).unwrap().caller,
            shopper
        );
        assert!(matches!(
            signer.verify(&token, NOW + 60, NO_EPOCH),
            Err(Error::Unauthorized("the token has expired"))
        ));
        let merchant = Caller::Merchant(MerchantId(7));
        let token = signer.issue(merchant, ISSUED, NOW + 60, NO_EPOCH);
        assert_eq!(
            signer.verify(&token, NOW, NO_EPOCH).unwrap().caller,
            merchant
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let signer = signer();
        let token = signer.issue(Caller::Shopper(ShopperId(42)), ISSUED, NOW + 60, NO_EPOCH);
        // Claim another shopper with the same MAC.
        let forged = token.replacen("s_2a", "s_2b", 1);
        assert!(signer.verify(&forged, NOW, NO_EPOCH).is_err());
        // Extend the expiry.
        let forged = token.replacen(&(NOW + 60).to_string(), &(NOW + 6000).to_string(), 1);
        assert!(signer.verify(&forged, NOW, NO_EPOCH).is_err());
        // Another secret's token.
        let other = Signer::new(b"another secret of enough bytes!!", "the-admin");
        let token = other.issue(Caller::Shopper(ShopperId(42)), ISSUED, NOW + 60, NO_EPOCH);
        assert!(signer.verify(&token, NOW, NO_EPOCH).is_err());
        for junk in [
            "",
            "v1",
            "v1.s_1.1.",
            "v2.s_1.1.",
            "v2.s_1.1.1.",
            "x.y.z.w",
            "the-admi",
            "the-admin ",
        ] {
            assert!(
                signer.verify(junk, NOW, NO_EPOCH).is_err(),
                "{junk:?} accepted"
            );
        }
    }

    /// After Redis lost its data, ids start again from 1; a token of the
    /// old epoch must not act for the new owner of its id.
    #[test]
    fn a_token_of_another_epoch_is_refused() {
        let signer = signer();
        let shopper = Caller::Shopper(ShopperId(1));
        let old = signer.issue(shopper, ISSUED, NOW + 60, 0x1234);
        assert_eq!(signer.verify(&old, NOW, 0x1234).unwrap().caller, shopper);
        let Err(Error::Unauthorized(message)) = signer.verify(&old, NOW, 0x5678) else {
            panic!("a token of another epoch is refused");
        };
        assert!(message.contains("epoch"), "{message}");
        assert!(
            signer.verify(&old, NOW, NO_EPOCH).is_err(),
            "nor taken by a deployment without one"
        );
        let plain = signer.issue(shopper, ISSUED, NOW + 60, NO_EPOCH);
        assert_eq!(
            plain.split('.').count(),
            5,
            "one node's tokens keep their form"
        );
        assert!(signer.verify(&plain, NOW, 0x5678).is_err());
        // The epoch is signed: another one cannot be written in.
        let moved = old.replacen("0000000000001234", "0000000000005678", 1);
        assert!(matches!(
            signer.verify(&moved, NOW, 0x5678),
            Err(Error::Unauthorized("the token is not valid"))
        ));
    }

    #[test]
    fn a_token_carries_its_issue_time_signed() {
        let signer = signer();
        let shopper = Caller::Shopper(ShopperId(42));
        let token = signer.issue(shopper, Timestamp(1_749_999_999_123), NOW + 60, NO_EPOCH);
        assert!(token.starts_with("v2.s_2a.1749999999123."), "{token}");
        assert_eq!(
            signer.verify(&token, NOW, NO_EPOCH).unwrap(),
            Verified {
                caller: shopper,
                issued_at: Some(Timestamp(1_749_999_999_123))
            }
        );
        // A later issue time cannot be written in to outlive a revocation.
        let moved = token.replacen("1749999999123", "1749999999999", 1);
        assert!(signer.verify(&moved, NOW, NO_EPOCH).is_err());
        // Nor can the token pass for a v1 one by dropping it.
        let dropped = token.replacen("v2.s_2a.1749999999123.", "v1.s_2a.", 1);
        assert!(signer.verify(&dropped, NOW, NO_EPOCH).is_err());
        // With an epoch: the issue time still comes before the expiry.
        let epoch = signer.issue(shopper, ISSUED, NOW + 60, 0xabc);
        assert_eq!(epoch.split('.').count(), 6, "{epoch}");
        assert_eq!(
            signer.verify(&epoch, NOW, 0xabc).unwrap().issued_at,
            Some(ISSUED)
        );
    }

    /// Tokens issued before the issue time was carried (`v1`) still verify,
    /// with no issue time: a revocation refuses them
    /// (`flashsale_engine::rules::token_in_force`).
    #[test]
    fn a_v1_token_still_verifies_without_an_issue_time() {
        let signer = signer();
        let v1 = |payload: &str| {
            let mac = signer
                .keyed
                .clone()
                .chain_update(payload.as_bytes())
                .finalize()
                .into_bytes();
            format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac))
        };
        let shopper = Caller::Shopper(ShopperId(42));
        let token = v1(&format!("v1.s_2a.{}", NOW + 60));
        assert_eq!(
            signer.verify(&token, NOW, NO_EPOCH).unwrap(),
            Verified {
                caller: shopper,
                issued_at: None
            }
        );
        assert!(matches!(
            signer.verify(&token, NOW + 60, NO_EPOCH),
            Err(Error::Unauthorized("the token has expired"))
        ));
        let with_epoch = v1(&format!("v1.m_7.{}.0000000000001234", NOW + 60));
        assert_eq!(
            signer.verify(&with_epoch, NOW, 0x1234).unwrap(),
            Verified {
                caller: Caller::Merchant(MerchantId(7)),
                issued_at: None
            }
        );
        assert!(flashsale_engine::rules::token_in_force(None, None));
        assert!(!flashsale_engine::rules::token_in_force(
            None,
            Some(Timestamp(1))
        ));
    }

    #[test]
    fn the_admin_token_is_recognised() {
        assert_eq!(
            signer().verify("the-admin", NOW, NO_EPOCH).unwrap(),
            Verified {
                caller: Caller::Admin,
                issued_at: None
            }
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
