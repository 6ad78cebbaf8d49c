//! Bearer tokens.
//!
//! Merchants' and shoppers' tokens are signed by the server, so checking
//! one is a pure computation (no lookup, no lock): `v1.<id>.<expiry>.<mac>`
//! where `<id>` is the account id as the API spells it (`m_1`, `s_2a`, so
//! the prefix carries the role), `<expiry>` is Unix seconds and `<mac>` is
//! HMAC-SHA256 over `v1.<id>.<expiry>` with the deployment's secret, in
//! URL-safe base64. Every node that shares the secret accepts the token.
//!
//! In multi-node mode ids are numbered by Redis, which may lose its data
//! and number from 1 again; so a token there also names the deployment's
//! **epoch** (a random 64-bit number kept in Redis, new whenever Redis
//! starts empty): `v1.<id>.<expiry>.<epoch in hex>.<mac>`, the MAC covering
//! the epoch too. A token of another epoch is refused (`401`): its id may
//! now name someone else (issue #12). One node has no epoch (0), and its
//! tokens keep the shorter form.
//!
//! The admin token comes from configuration. It is compared in constant
//! time by comparing MACs: the presented token's MAC against the configured
//! one's, computed once at start, so neither its content nor its length
//! leaks through timing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashsale_engine::{MerchantId, ShopperId};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

const TOKEN_VERSION: &str = "v1";
/// Bytes of an HMAC-SHA256 tag.
const MAC_BYTES: usize = 32;
/// Longest token text looked at; longer ones are refused unread.
const TOKEN_BYTES_MAX: usize = 256;
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

    /// A token for a merchant or shopper, valid until `expires_at` (Unix
    /// seconds) in the deployment's `epoch` (0: none, one node). Admin
    /// tokens are configured, never issued.
    pub fn issue(&self, caller: Caller, expires_at: i64, epoch: u64) -> String {
        let mut payload = match caller {
            Caller::Merchant(id) => format!("{TOKEN_VERSION}.{id}.{expires_at}"),
            Caller::Shopper(id) => format!("{TOKEN_VERSION}.{id}.{expires_at}"),
            Caller::Admin => unreachable!("admin tokens are configured, not issued"),
        };
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
    /// deployment's `epoch` (0: none). Errors: [`Error::Unauthorized`] for
    /// a token that is forged, expired, or of another epoch.
    pub fn verify(&self, token: &str, now: i64, epoch: u64) -> Result<Caller, Error> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(Error::Unauthorized("the token is not valid"));
        }
        if let Some(caller) = self.verify_signed(token, now, epoch)? {
            return Ok(caller);
        }
        let admin = self
            .keyed
            .clone()
            .chain_update(ADMIN_CONTEXT)
            .chain_update(token.as_bytes());
        match admin.verify_slice(&self.admin_mac) {
            Ok(()) => Ok(Caller::Admin),
            Err(_) => Err(Error::Unauthorized("the token is not valid")),
        }
    }

    /// `Ok(None)` when the text is not shaped like a signed token (it may
    /// be the admin token); an error when it is but does not verify.
    fn verify_signed(&self, token: &str, now: i64, epoch: u64) -> Result<Option<Caller>, Error> {
        let Some((payload, mac_text)) = token.rsplit_once('.') else {
            return Ok(None);
        };
        let mut parts = payload.split('.');
        let (Some(TOKEN_VERSION), Some(id), Some(expiry), token_epoch, None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Ok(None);
        };
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
        let token_epoch = match token_epoch {
            None => NO_EPOCH,
            Some(hex) => u64::from_str_radix(hex, 16)
                .map_err(|_| Error::Unauthorized("the token is not valid"))?,
        };
        if token_epoch != epoch {
            return Err(Error::Unauthorized(
                "the token is of an earlier epoch of this deployment (its Redis lost its data, \
                 and the token's id may name someone else now); get a new token",
            ));
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
        Ok(Some(caller))
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

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef0123456789abcdef", "the-admin")
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let signer = signer();
        let shopper = Caller::Shopper(ShopperId(42));
        let token = signer.issue(shopper, NOW + 60, NO_EPOCH);
        assert_eq!(signer.verify(&token, NOW, NO_EPOCH).unwrap(), shopper);
        assert!(matches!(
            signer.verify(&token, NOW + 60, NO_EPOCH),
            Err(Error::Unauthorized("the token has expired"))
        ));
        let merchant = Caller::Merchant(MerchantId(7));
        let token = signer.issue(merchant, NOW + 60, NO_EPOCH);
        assert_eq!(signer.verify(&token, NOW, NO_EPOCH).unwrap(), merchant);
    }

    #[test]
    fn forged_tokens_are_refused() {
        let signer = signer();
        let token = signer.issue(Caller::Shopper(ShopperId(42)), NOW + 60, NO_EPOCH);
        // Claim another shopper with the same MAC.
        let forged = token.replacen("s_2a", "s_2b", 1);
        assert!(signer.verify(&forged, NOW, NO_EPOCH).is_err());
        // Extend the expiry.
        let forged = token.replacen(&(NOW + 60).to_string(), &(NOW + 6000).to_string(), 1);
        assert!(signer.verify(&forged, NOW, NO_EPOCH).is_err());
        // Another secret's token.
        let other = Signer::new(b"another secret of enough bytes!!", "the-admin");
        let token = other.issue(Caller::Shopper(ShopperId(42)), NOW + 60, NO_EPOCH);
        assert!(signer.verify(&token, NOW, NO_EPOCH).is_err());
        for junk in ["", "v1", "v1.s_1.1.", "x.y.z.w", "the-admi", "the-admin "] {
            assert!(
                signer.verify(junk, NOW, NO_EPOCH).is_err(),
                "{junk:?} accepted"
            );
        }
    }

    /// Issue #12: after Redis lost its data, ids start again from 1; a
    /// token of the old epoch must not act for the new owner of its id.
    #[test]
    fn a_token_of_another_epoch_is_refused() {
        let signer = signer();
        let shopper = Caller::Shopper(ShopperId(1));
        let old = signer.issue(shopper, NOW + 60, 0x1234);
        assert_eq!(signer.verify(&old, NOW, 0x1234).unwrap(), shopper);
        let Err(Error::Unauthorized(message)) = signer.verify(&old, NOW, 0x5678) else {
            panic!("a token of another epoch is refused");
        };
        assert!(message.contains("epoch"), "{message}");
        assert!(
            signer.verify(&old, NOW, NO_EPOCH).is_err(),
            "nor taken by a deployment without one"
        );
        let plain = signer.issue(shopper, NOW + 60, NO_EPOCH);
        assert_eq!(
            plain.split('.').count(),
            4,
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
    fn the_admin_token_is_recognised() {
        assert_eq!(
            signer().verify("the-admin", NOW, NO_EPOCH).unwrap(),
            Caller::Admin
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
