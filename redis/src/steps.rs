//! The server-side steps, defined once on the Rust side: the Functions
//! library (`redis/flashsale.lua`), its versioned name, and one definition
//! per step (name, keys and arguments in order, read only or not, the
//! reply tags it may answer and what follows `OK`).
//!
//! Each step is a struct with one field per key and per argument, made by
//! the `steps!` table below; its `Call` impl lists them in the
//! definition's order, so a caller names every key and argument and cannot
//! put one in the wrong place. The Lua states the same call in a `---`
//! block above each step; `tests::the_lua_header_states_the_rust_steps`
//! holds the two equal.
//!
//! ## Versions
//! The library is named `flashsale_<16 hex digits>`: an FNV-1a hash of
//! `flashsale.lua`, computed at compile time ([`LIBRARY_VERSION`]), put in
//! place of the source's `flashsale_VERSION` placeholder, and each step is
//! the function `<library>_<step>`. Any change to the Lua makes a new name,
//! so during a rolling upgrade the old and the new binaries each load and
//! call their own library side by side (`FUNCTION LOAD REPLACE` only ever
//! replaces a library of the same name, that is the same code). Libraries
//! of builds no longer running stay loaded until an operator deletes them
//! (`FUNCTION DELETE flashsale_<old>`; docs/multi-node.md).

/// The library's source, with the `flashsale_VERSION` placeholder.
pub(crate) const LIBRARY_SOURCE: &str = include_str!("../flashsale.lua");

/// The placeholder in [`LIBRARY_SOURCE`] that [`library_name`] replaces.
const PLACEHOLDER: &str = "flashsale_VERSION";

/// A 64-bit FNV-1a hash, at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        index += 1;
    }
    hash
}

/// The library's version: the hash of its source.
pub const LIBRARY_VERSION: u64 = fnv1a(LIBRARY_SOURCE.as_bytes());

/// `flashsale_<LIBRARY_VERSION in 16 hex digits>`.
pub fn library_name() -> String {
    format!("flashsale_{LIBRARY_VERSION:016x}")
}

/// The library as `FUNCTION LOAD` takes it: the source under its
/// versioned name.
pub fn library_code() -> String {
    LIBRARY_SOURCE.replace(PLACEHOLDER, &library_name())
}

/// One server-side step, as the Lua header states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    /// Key names, in order.
    pub keys: &'static [&'static str],
    /// A last part of the keys, as the header writes it: `name...` any
    /// number of them, `name?` at most one.
    pub keys_tail: Option<&'static str>,
    /// Argument names, in order.
    pub args: &'static [&'static str],
    /// A last part of the arguments repeated any number of times, as the
    /// header writes it (`name...`, `(a b c)...`).
    pub args_tail: Option<&'static str>,
    /// Reads only (`no-writes`): called with `FCALL_RO`.
    pub read_only: bool,
    /// The reply tags the step may answer (`OK`, `ERR`, `REFILL`, `TERMS`,
    /// `EPOCH`, `BACKLOG`); any other is a garbled reply.
    pub replies: &'static [&'static str],
    /// What follows `OK` in its reply, by name (empty: nothing).
    pub ok: &'static str,
}

impl Step {
    /// The Redis function of this step: `<library>_<step>`.
    pub fn function(&self) -> String {
        format!("{}_{}", library_name(), self.name)
    }

    /// `FCALL_RO` for a read-only step, else `FCALL`.
    pub fn command(&self) -> &'static str {
        if self.read_only { "FCALL_RO" } else { "FCALL" }
    }
}

/// A step's call: its definition, and its keys and arguments in order.
pub(crate) trait Call {
    const STEP: Step;
    fn keys(&self) -> Vec<&str>;
    fn args(&self) -> Vec<&str>;

    /// The whole command (`FCALL <function> <numkeys> keys… args…`).
    fn command(&self) -> redis::Cmd {
        let keys = self.keys();
        let mut cmd = redis::cmd(Self::STEP.command());
        cmd.arg(Self::STEP.function())
            .arg(keys.len())
            .arg(keys)
            .arg(self.args());
        cmd
    }

    /// The command with a test's time first among the arguments (`@ms`),
    /// which the library takes off and reads in place of `TIME`
    /// (`RedisSettings::clock`, tests only).
    fn command_at(&self, millis: i64) -> redis::Cmd {
        let keys = self.keys();
        let mut cmd = redis::cmd(Self::STEP.command());
        cmd.arg(Self::STEP.function())
            .arg(keys.len())
            .arg(keys)
            .arg(format!("@{millis}"))
            .arg(self.args());
        cmd
    }
}

macro_rules! steps {
    ($(
        $(#[$doc:meta])*
        $ty:ident $name:literal $mode:ident {
            keys: [$($key:ident),* $(,)?] $(+ $key_tail:ident $key_spec:literal)?;
            args: [$($arg:ident),* $(,)?] $(+ $arg_tail:ident $arg_spec:literal)?;
            replies: [$($reply:literal),* $(,)?];
            ok: $ok:literal;
        }
    )*) => {
        $(
            $(#[$doc])*
            pub(crate) struct $ty {
                $(pub(crate) $key: String,)*
                $(pub(crate) $key_tail: Vec<String>,)?
                $(pub(crate) $arg: String,)*
                $(pub(crate) $arg_tail: Vec<String>,)?
            }

            impl Call for $ty {
                const STEP: Step = Step {
                    name: $name,
                    keys: &[$(stringify!($key)),*],
                    keys_tail: steps!(@tail $($key_spec)?),
                    args: &[$(stringify!($arg)),*],
                    args_tail: steps!(@tail $($arg_spec)?),
                    read_only: steps!(@read_only $mode),
                    replies: &[$($reply),*],
                    ok: $ok,
                };

                #[allow(unused_mut)]
                fn keys(&self) -> Vec<&str> {
                    let mut keys: Vec<&str> = vec![$(self.$key.as_str()),*];
                    $(keys.extend(self.$key_tail.iter().map(String::as_str));)?
                    keys
                }

                #[allow(unused_mut)]
                fn args(&self) -> Vec<&str> {
                    let mut args: Vec<&str> = vec![$(self.$arg.as_str()),*];
                    $(args.extend(self.$arg_tail.iter().map(String::as_str));)?
                    args
                }
            }
        )*

        /// Every step, in the Lua's order.
        pub const STEPS: &[Step] = &[$(<$ty as Call>::STEP),*];
    };
    (@tail) => { None };
    (@tail $spec:literal) => { Some($spec) };
    (@read_only read_only) => { true };
    (@read_only writes) => { false };
}

steps! {
    /// One-tap buys (`kind` "order") and holds ("hold") of one deal on one
    /// shard, any number of them, each with its own outcome (`batch`):
    /// `deal_orders`, `records`: the deal's order list and record set on
    /// the shard; per request its shopper's `account`, which keeps the
    /// idempotency record and the order ids. `sold_out`: the node's flag
    /// (1|0); `backlog`: the books stream's bound; `terms`: the node's copy
    /// of the deal's terms (`DealEntry::terms_arg`); per request its
    /// `shopper`, `kind`, `quantity`, `epoch` (the caller's token's:
    /// `EPOCH` when the account was made in another) and idempotency
    /// `key`. `OK` is followed by one outcome per request, a reply of its
    /// own laid out flat, its tag then its fields ([`RESERVE_OUTCOMES`]).
    Reserve "reserve" writes {
        keys: [stock, orders, holds, expiries, sequences, deal_orders, records, books]
            + accounts "account...";
        args: [deal, shard, sold_out, backlog, terms]
            + each "(shopper kind quantity epoch key)...";
        replies: ["OK", "TERMS"];
        ok: "(outcome)...";
    }
    /// Pays a hold, in its time or late; `terms`: the node's copy of the
    /// hold's deal's terms; `epoch`: the caller's token's, `EPOCH` when
    /// the account was made in another.
    Pay "pay" writes {
        keys: [account, stock, orders, holds, expiries, deal_orders, books];
        args: [hold, shopper, shard, backlog, terms, epoch];
        replies: ["OK", "ERR", "REFILL", "TERMS", "EPOCH", "BACKLOG"];
        ok: "kind body";
    }
    /// Releases a hold (`shopper` the caller), or expires it (`shopper`
    /// `*`, the sweep); `account` is the hold's shopper's; `epoch`: the
    /// caller's token's (empty for the sweep), `EPOCH` when the account
    /// was made in another.
    Release "release" writes {
        keys: [account, stock, holds, expiries];
        args: [hold, shopper, epoch];
        replies: ["OK", "ERR", "EPOCH"];
        ok: "kind body";
    }
    /// Credits a wallet once per reference; `bound` is the largest wallet.
    Credit "credit" writes {
        keys: [account, books];
        args: [amount, reference, bound, shopper];
        replies: ["OK", "ERR"];
        ok: "credited available held spent";
    }
    /// Creates the accounts of one shard; `each` holds, per account, its
    /// shopper id, name and credit reference; `epoch`: the deployment's,
    /// which each account keeps.
    Accounts "accounts" writes {
        keys: [books] + accounts "account...";
        args: [created_at, credit, epoch] + each "(shopper name reference)...";
        replies: ["OK"];
        ok: "";
    }
    /// Makes the account of a platform's user id on its shard unless it
    /// exists, crediting `credit` under `reference` when it makes it;
    /// `epoch`: the deployment's, which the account keeps.
    Link "link" writes {
        keys: [books, account];
        args: [created_at, credit, shopper, name, reference, external, epoch];
        replies: ["OK"];
        ok: "made name created_at external";
    }
    /// Registers a shopper for a deal before it starts; `terms`: the
    /// node's copy of the deal's terms; `epoch`: the caller's token's,
    /// `EPOCH` when the account was made in another.
    Register "register" writes {
        keys: [account, stock];
        args: [deal, terms, epoch];
        replies: ["OK", "ERR", "TERMS", "EPOCH"];
        ok: "outcome";
    }
    /// Installs the version of a deal's terms on a shard unless it holds
    /// this or a newer one.
    Terms "terms" writes {
        keys: [stock];
        args: [deal, version];
        replies: ["OK"];
        ok: "outcome";
    }
    /// The shard half of a pool-to-bucket transfer, once per transfer id.
    Accept "accept" writes {
        keys: [stock, accepted];
        args: [deal, transfer, units];
        replies: ["OK"];
        ok: "";
    }
    /// Empties a shard's bucket of a deal under a new sweep id, answering
    /// every sweep of the deal still pending there.
    SweepOut "sweep_out" writes {
        keys: [stock, pending, sequences];
        args: [deal, shard];
        replies: ["OK"];
        ok: "(sweep units)...";
    }
    /// The sweep reached the pool; forget it.
    SweepDone "sweep_done" writes {
        keys: [pending];
        args: [sweep];
        replies: ["OK"];
        ok: "";
    }
    /// The order's shopper reviews it once; the shard's rating sums count
    /// it. `account`: the caller's on the order's shard; `epoch`: the
    /// caller's token's, `EPOCH` when the account was made in another.
    Review "review" writes {
        keys: [orders, reviews, ratings, account];
        args: [order, shopper, merchant, description, delivery, service, text, created_at,
            epoch];
        replies: ["OK", "ERR", "EPOCH"];
        ok: "deal";
    }
    /// Counts a shared order toward its deal's popularity once.
    /// `account`: the caller's on the order's shard; `epoch`: the caller's
    /// token's, `EPOCH` when the account was made in another.
    Share "share" writes {
        keys: [orders, shared, stock, account];
        args: [order, shopper, epoch];
        replies: ["OK", "ERR", "EPOCH"];
        ok: "outcome";
    }
    /// A read-only snapshot of one shard for `flashsale audit`.
    Audit "audit" read_only {
        keys: [stock, orders, holds] + accounts "account...";
        args: [];
        replies: ["OK"];
        ok: "stock orders holds wallets";
    }
    /// A new deal, its whole stock in the pool, with its books entry.
    Create "create" writes {
        keys: [deal, books];
        args: [merchant, title, price, stock, limit, starts, ends, registration,
            hold_seconds, created_at];
        replies: ["OK"];
        ok: "";
    }
    /// Moves units from a deal's pool towards a shard's bucket.
    Refill "refill" writes {
        keys: [deal, transfers];
        args: [shard, need, shards];
        replies: ["OK"];
        ok: "transfer units pool";
    }
    /// The transfer reached its bucket; forget it.
    Confirm "confirm" writes {
        keys: [transfers];
        args: [transfer];
        replies: ["OK"];
        ok: "";
    }
    /// Adds a sweep's units to the pool once per sweep id.
    SweepIn "sweep_in" writes {
        keys: [deal, accepted];
        args: [sweep, units, channel];
        replies: ["OK"];
        ok: "";
    }
    /// Marks the deal sold out when nothing is left in its pool or on the way.
    SoldOut "sold_out" writes {
        keys: [deal, transfers];
        args: [channel];
        replies: ["OK"];
        ok: "marked";
    }
    /// A merchant's change to its deal; `add_stock`, `ends_at`, `paused`
    /// are empty when not changed; `stock_max` bounds the total.
    Update "update" writes {
        keys: [deal, books];
        args: [merchant, add_stock, ends_at, paused, stock_max, channel];
        replies: ["OK", "ERR"];
        ok: "";
    }
    /// `count` new ids of `kind`, under the node's epoch; `index` (deals
    /// only) is the deal index the new id goes into.
    Ids "ids" writes {
        keys: [sequences, epoch] + index "index?";
        args: [kind, count, node_epoch];
        replies: ["OK", "EPOCH"];
        ok: "last";
    }
    /// Makes the merchant of a platform's user id unless it exists.
    Merchant "merchant" writes {
        keys: [merchant];
        args: [name, created_at, external];
        replies: ["OK"];
        ok: "made name created_at";
    }
    /// Revokes an account's tokens (`account` as the API spells it): its
    /// time in `times` becomes `not_before` (ms) or stays a later one, the
    /// time in force is appended to `revocations` and announced on
    /// `channel`; `bound` is [`flashsale_engine::TOKEN_REVOCATIONS_MAX`].
    Revoke "revoke" writes {
        keys: [times, revocations];
        args: [account, not_before, bound, channel];
        replies: ["OK", "ERR"];
        ok: "in_force";
    }
}

/// The terms [`bench_reserve_call`] passes: version 1, price 1.00, a
/// limit and a window no bench reaches, no pause, no registration
/// (`version:price:limit:starts:ends:paused:registration:hold_seconds`).
pub const BENCH_TERMS: &str = "1:100:1000000000000:0:99999999999999:0:0:60";

/// The reply tags of one request's outcome in a `reserve` reply (the
/// script header's reply shapes), each with its words in the flat reply:
/// the tag and its fields (`RESERVE_OUTCOME_WORDS` in the script).
pub(crate) const RESERVE_OUTCOMES: &[(&str, usize)] = &[
    ("OK", 4),
    ("ERR", 3),
    ("REFILL", 3),
    ("EPOCH", 1),
    ("BACKLOG", 1),
];

/// The call a node makes to buy one unit of deal 1 for shopper `shopper`
/// (its id as text) on shard 0 of `namespace`, `requests` times in one
/// call (at least once), each with idempotency key `key`, as `redis-cli`
/// words (`scripts/compare.sh` hands it to `redis-benchmark`, which makes
/// each `__rand_int__` in them a random number of its own: a shopper of
/// `__rand_int__` spreads the buys over that many accounts, as a flash
/// sale's one buy per shopper does). The bench's terms are
/// [`BENCH_TERMS`], the node's sold-out flag off, the books unbounded, the
/// token's epoch 1 (the bench's accounts keep none, so the step reads
/// their `e` and passes).
pub fn bench_reserve_call(
    namespace: &str,
    shopper: &str,
    key: &str,
    requests: usize,
) -> Vec<String> {
    let keys = crate::keys::Keys {
        namespace: namespace.to_owned(),
    };
    let (shard, deal) = (0, 1);
    let mut call = Reserve {
        stock: keys.shard(shard, "stock"),
        orders: keys.shard(shard, "orders"),
        holds: keys.shard(shard, "holds"),
        expiries: keys.shard(shard, "exp"),
        sequences: keys.shard(shard, "seq"),
        deal_orders: keys.shard_id(shard, "do", deal),
        records: keys.shard_id(shard, "rec", deal),
        books: keys.shard(shard, "books"),
        accounts: Vec::new(),
        deal: deal.to_string(),
        shard: shard.to_string(),
        sold_out: "0".to_owned(),
        backlog: "0".to_owned(),
        terms: BENCH_TERMS.to_owned(),
        each: Vec::new(),
    };
    for _ in 0..requests.max(1) {
        call.accounts
            .push(keys.shard(shard, &format!("acct:{shopper}")));
        call.each.extend([
            shopper.to_owned(),
            "order".to_owned(),
            "1".to_owned(),
            "1".to_owned(),
            key.to_owned(),
        ]);
    }
    let keys = call.keys();
    let mut words = vec![
        Reserve::STEP.command().to_owned(),
        Reserve::STEP.function(),
        keys.len().to_string(),
    ];
    words.extend(keys.into_iter().map(str::to_owned));
    words.extend(call.args().into_iter().map(str::to_owned));
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `---` block of the Lua header.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Stated {
        name: String,
        keys: String,
        args: String,
        replies: String,
        ok: String,
        flags: String,
    }

    fn stated() -> Vec<Stated> {
        let mut steps: Vec<Stated> = Vec::new();
        for line in LIBRARY_SOURCE.lines() {
            let Some(rest) = line.strip_prefix("--- ") else {
                continue;
            };
            let (field, value) = rest.split_once(':').expect("`--- field: value`");
            let value = value.trim().to_owned();
            if field == "step" {
                steps.push(Stated {
                    name: value,
                    ..Stated::default()
                });
                continue;
            }
            let step = steps.last_mut().expect("`--- step:` first");
            let slot = match field {
                "keys" => &mut step.keys,
                "args" => &mut step.args,
                "replies" => &mut step.replies,
                "ok" => &mut step.ok,
                "flags" => &mut step.flags,
                other => panic!("unknown header field {other}"),
            };
            assert!(slot.is_empty(), "{field} twice for {}", step.name);
            *slot = value;
        }
        steps
    }

    fn words(fixed: &[&str], tail: Option<&str>) -> String {
        fixed
            .iter()
            .copied()
            .chain(tail)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn as_stated(step: &Step) -> Stated {
        Stated {
            name: step.name.to_owned(),
            keys: words(step.keys, step.keys_tail),
            args: words(step.args, step.args_tail),
            replies: step.replies.join(" "),
            ok: step.ok.to_owned(),
            flags: if step.read_only { "no-writes" } else { "-" }.to_owned(),
        }
    }

    #[test]
    fn the_lua_header_states_the_rust_steps() {
        let rust: Vec<Stated> = STEPS.iter().map(as_stated).collect();
        assert_eq!(stated(), rust);
    }

    /// The registration table gives each step its function and flags.
    #[test]
    fn the_lua_registers_every_step_with_its_flags() {
        let registered: Vec<(String, bool)> = LIBRARY_SOURCE
            .lines()
            .filter_map(|line| {
                let entry = line.trim().strip_prefix("{'")?.strip_suffix("},")?;
                let (name, rest) = entry.split_once("', ")?;
                Some((name.to_owned(), rest.ends_with("{'no-writes'}")))
            })
            .collect();
        let rust: Vec<(String, bool)> = STEPS
            .iter()
            .map(|step| (step.name.to_owned(), step.read_only))
            .collect();
        assert_eq!(registered, rust);
    }

    #[test]
    fn the_library_is_named_by_its_version() {
        let code = library_code();
        let name = library_name();
        assert!(code.starts_with(&format!("#!lua name={name}\n")));
        assert!(code.contains(&format!("local LIBRARY = '{name}'")));
        assert!(!code.contains(PLACEHOLDER));
        assert_eq!(name.len(), "flashsale_".len() + 16);
        assert_eq!(Reserve::STEP.function(), format!("{name}_reserve"));
    }

    #[test]
    fn a_call_lists_keys_then_arguments_in_order() {
        let words = bench_reserve_call("ns", "1", "k", 2);
        assert_eq!(words[0], "FCALL");
        assert_eq!(words[2], "10");
        assert_eq!(words[3], "ns:{s:0}:stock");
        assert_eq!(words[11..13], ["ns:{s:0}:acct:1", "ns:{s:0}:acct:1"]);
        assert_eq!(
            words[13..],
            [
                "1",
                "0",
                "0",
                "0",
                BENCH_TERMS,
                "1",
                "order",
                "1",
                "1",
                "k",
                "1",
                "order",
                "1",
                "1",
                "k"
            ]
        );
        let audit = Audit {
            stock: "s".into(),
            orders: "o".into(),
            holds: "h".into(),
            accounts: vec!["a1".into(), "a2".into()],
        };
        assert_eq!(audit.keys(), ["s", "o", "h", "a1", "a2"]);
        let packed = audit.command().get_packed_command();
        assert!(packed.windows(8).any(|word| word == b"FCALL_RO"));
    }
}
