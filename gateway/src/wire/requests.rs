//! The request bodies each endpoint takes, and what each field accepts.

use flashsale_engine::MONEY_ACCEPTS;
use serde::Deserialize;

use super::decode::{Field, RequestBody, TIME_ACCEPTS, parse_json};
use crate::error::Error;

/// What a one-line text field accepts (the engine checks it).
pub(crate) const NAME_ACCEPTS: &str =
    "must be a string of 1 to 100 characters without control characters";
/// What a whole-number count accepts at the wire; the engine narrows it.
pub(crate) const COUNT_ACCEPTS: &str = "must be a whole number from 1 to 4294967295";

/// `{name}`: a merchant or a shopper.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    pub name: String,
}

impl RequestBody<'_> for NameBody {
    const FIELDS: &'static [Field] = &[Field {
        name: "name",
        accepts: NAME_ACCEPTS,
    }];
}

/// `{ttl_seconds?}`: a token issued by the admin for an existing account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    #[serde(default, deserialize_with = "present")]
    pub ttl_seconds: Option<u64>,
}

/// What `ttl_seconds` accepts (the upper bound is `--token-ttl-hours`).
pub(crate) const TTL_SECONDS_ACCEPTS: &str =
    "must be a whole number of seconds from 1 to the server's --token-ttl-hours in seconds";

impl RequestBody<'_> for TokenBody {
    const FIELDS: &'static [Field] = &[Field {
        name: "ttl_seconds",
        accepts: TTL_SECONDS_ACCEPTS,
    }];
}

/// `{count, credit}`: bulk shoppers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkShoppersBody {
    pub count: u32,
    pub credit: String,
}

impl RequestBody<'_> for BulkShoppersBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "count",
            accepts: "must be a whole number from 1 to 10000",
        },
        Field {
            name: "credit",
            accepts: MONEY_ACCEPTS,
        },
    ];
}

/// `{amount, reference}`: a wallet credit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditBody {
    pub amount: String,
    pub reference: String,
}

impl RequestBody<'_> for CreditBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "amount",
            accepts: MONEY_ACCEPTS,
        },
        Field {
            name: "reference",
            accepts: "must be a string of 1 to 255 bytes without control characters",
        },
    ];
}

/// `POST /v1/deals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDealBody {
    pub title: String,
    pub price: String,
    pub stock: u64,
    #[serde(default, deserialize_with = "present")]
    pub per_user_limit: Option<u32>,
    pub starts_at: String,
    pub ends_at: String,
    /// Absent: `true` for a raffle, `false` otherwise.
    #[serde(default, deserialize_with = "present")]
    pub requires_registration: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub hold_seconds: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub allocation: Option<String>,
}

/// An optional field: absent is `None`, and `null` is refused like any
/// other value of the wrong type (`422 invalid` naming the field,
/// `docs/walkthrough.md` "Input rules"), never taken for absent.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `allocation` as the API spells it (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllocationName {
    FirstCome,
    Raffle,
}

impl AllocationName {
    /// `"first_come"` or `"raffle"`; anything else is `422 invalid`
    /// naming `allocation`.
    pub(crate) fn parse(text: &str) -> Result<AllocationName, Error> {
        match text {
            "first_come" => Ok(AllocationName::FirstCome),
            "raffle" => Ok(AllocationName::Raffle),
            _ => Err(Error::Invalid {
                field: "allocation",
                reason: ALLOCATION_ACCEPTS,
            }),
        }
    }
}

pub(crate) const ALLOCATION_ACCEPTS: &str = "must be \"first_come\" or \"raffle\", or absent";

impl RequestBody<'_> for NewDealBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "title",
            accepts: "must be a string of 1 to 200 characters without control characters",
        },
        Field {
            name: "price",
            accepts: MONEY_ACCEPTS,
        },
        Field {
            name: "stock",
            accepts: "must be a whole number from 1 to 1000000000",
        },
        Field {
            name: "per_user_limit",
            accepts: "must be a whole number from 1 to 1000, or absent",
        },
        Field {
            name: "starts_at",
            accepts: TIME_ACCEPTS,
        },
        Field {
            name: "ends_at",
            accepts: TIME_ACCEPTS,
        },
        Field {
            name: "requires_registration",
            accepts: "must be true or false, or absent",
        },
        Field {
            name: "hold_seconds",
            accepts: "must be a whole number from 1 to 86400, or absent",
        },
        Field {
            name: "allocation",
            accepts: ALLOCATION_ACCEPTS,
        },
    ];
}

/// `PATCH /v1/deals/{id}`: at least one field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DealChangeBody {
    #[serde(default, deserialize_with = "present")]
    pub add_stock: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    pub ends_at: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub paused: Option<bool>,
    /// Accepted only as the deal's own allocation: registrations open
    /// when a deal is posted, so it never changes after.
    #[serde(default, deserialize_with = "present")]
    pub allocation: Option<String>,
}

impl RequestBody<'_> for DealChangeBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "add_stock",
            accepts: "must be a whole number from 1 to 1000000000",
        },
        Field {
            name: "ends_at",
            accepts: TIME_ACCEPTS,
        },
        Field {
            name: "paused",
            accepts: "must be true or false",
        },
        Field {
            name: "allocation",
            accepts: ALLOCATION_ACCEPTS,
        },
    ];
}

impl DealChangeBody {
    /// A change that sets none of `add_stock`, `ends_at`, `paused` changes
    /// nothing (`allocation` may only repeat the deal's own): it is refused
    /// rather than answered 200 as if it had.
    pub(crate) fn check_not_empty(&self) -> Result<(), Error> {
        if self.add_stock.is_none() && self.ends_at.is_none() && self.paused.is_none() {
            return Err(Error::Invalid {
                field: "body",
                reason: "must set at least one of add_stock, ends_at, paused",
            });
        }
        Ok(())
    }
}

/// The body of an endpoint named by its path alone (register, pay or
/// release a hold, share): it takes no field, so the only object it
/// accepts is `{}`; `#[serde(deny_unknown_fields)]` names any other field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFieldsBody {}

impl RequestBody<'_> for NoFieldsBody {
    const FIELDS: &'static [Field] = &[];
}

/// JSON's whitespace (RFC 8259 section 2): space, tab, line feed, return.
pub(crate) fn is_json_whitespace(byte: &u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Checks the body of an endpoint that takes no field (`docs/walkthrough.md`, "Input
/// rules", which bind every endpoint): no body, an empty one or JSON
/// whitespace only is accepted (`curl -X POST` sends none), and so is `{}`;
/// anything else is [`parse_json`]'s refusal of a [`NoFieldsBody`]: not an
/// object is `400 malformed_json`, an object with a field is `422 invalid`
/// naming it.
pub(crate) fn parse_no_fields(bytes: &[u8]) -> Result<(), Error> {
    if bytes.iter().all(is_json_whitespace) {
        return Ok(());
    }
    let NoFieldsBody {} = parse_json(bytes)?;
    Ok(())
}

/// `{quantity}`: a buy or a hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuantityBody {
    pub quantity: u32,
}

impl RequestBody<'_> for QuantityBody {
    const FIELDS: &'static [Field] = &[Field {
        name: "quantity",
        accepts: COUNT_ACCEPTS,
    }];
}

/// `{description, delivery, service, text?}`. Scores are read as any
/// integer so that one out of range is `invalid` naming its field rather
/// than a shape error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewBody {
    pub description: i64,
    pub delivery: i64,
    pub service: i64,
    #[serde(default)]
    pub text: String,
}

pub(crate) const SCORE_ACCEPTS: &str = "must be a whole number from 1 to 5";

impl RequestBody<'_> for ReviewBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "description",
            accepts: SCORE_ACCEPTS,
        },
        Field {
            name: "delivery",
            accepts: SCORE_ACCEPTS,
        },
        Field {
            name: "service",
            accepts: SCORE_ACCEPTS,
        },
        Field {
            name: "text",
            accepts: "must be a string of at most 500 characters without control characters \
                      other than tab and line breaks",
        },
    ];
}

impl ReviewBody {
    /// The three scores, each 1 to 5.
    pub(crate) fn scores(&self) -> Result<[u8; 3], Error> {
        let score = |value: i64, field: &'static str| {
            u8::try_from(value)
                .ok()
                .filter(|score| (1..=5).contains(score))
                .ok_or(Error::Invalid {
                    field,
                    reason: SCORE_ACCEPTS,
                })
        };
        Ok([
            score(self.description, "description")?,
            score(self.delivery, "delivery")?,
            score(self.service, "service")?,
        ])
    }
}
