//! Routing: a path and a method to one [`Endpoint`].
//!
//! Paths are matched with `matchit` (a radix tree, zero-copy parameters);
//! each path knows which methods it takes, so a known path with another
//! method is `405` with `Allow`, and an unknown path is `404`. The
//! [`Endpoint`] doubles as the `route` label of the request metrics.

use hyper::Method;

use crate::error::Error;

/// Every endpoint of HTTP API v1 the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    CreateMerchant,
    CreateShopper,
    CreateShoppersBulk,
    CreditWallet,
    CreditExternalWallet,
    IssueMerchantToken,
    RevokeMerchantTokens,
    IssueShopperToken,
    RevokeShopperTokens,
    GetWallet,
    CreateDeal,
    GetDeal,
    PatchDeal,
    DealQrSvg,
    DealQrPng,
    Feed,
    FeedStream,
    Register,
    GetDraw,
    GetDrawMe,
    GetDrawRegistrants,
    Buy,
    CreateHold,
    PayHold,
    ReleaseHold,
    GetOrder,
    ListOrders,
    Review,
    Share,
    MerchantMe,
    ExchangeToken,
    Storefront,
    MerchantPage,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
}

impl Endpoint {
    pub(crate) const ALL: [Endpoint; 37] = [
        Endpoint::CreateMerchant,
        Endpoint::CreateShopper,
        Endpoint::CreateShoppersBulk,
        Endpoint::CreditWallet,
        Endpoint::CreditExternalWallet,
        Endpoint::IssueMerchantToken,
        Endpoint::RevokeMerchantTokens,
        Endpoint::IssueShopperToken,
        Endpoint::RevokeShopperTokens,
        Endpoint::GetWallet,
        Endpoint::CreateDeal,
        Endpoint::GetDeal,
        Endpoint::PatchDeal,
        Endpoint::DealQrSvg,
        Endpoint::DealQrPng,
        Endpoint::Feed,
        Endpoint::FeedStream,
        Endpoint::Register,
        Endpoint::GetDraw,
        Endpoint::GetDrawMe,
        Endpoint::GetDrawRegistrants,
        Endpoint::Buy,
        Endpoint::CreateHold,
        Endpoint::PayHold,
        Endpoint::ReleaseHold,
        Endpoint::GetOrder,
        Endpoint::ListOrders,
        Endpoint::Review,
        Endpoint::Share,
        Endpoint::MerchantMe,
        Endpoint::ExchangeToken,
        Endpoint::Storefront,
        Endpoint::MerchantPage,
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Metrics,
        Endpoint::OpenApi,
    ];

    /// The `route` label: method and path pattern.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Endpoint::CreateMerchant => "POST /v1/merchants",
            Endpoint::CreateShopper => "POST /v1/shoppers",
            Endpoint::CreateShoppersBulk => "POST /v1/admin/shoppers",
            Endpoint::CreditWallet => "POST /v1/wallets/{id}/credits",
            Endpoint::CreditExternalWallet => "POST /v1/wallets/external/{id}/credits",
            Endpoint::IssueMerchantToken => "POST /v1/merchants/{id}/tokens",
            Endpoint::RevokeMerchantTokens => "DELETE /v1/merchants/{id}/tokens",
            Endpoint::IssueShopperToken => "POST /v1/shoppers/{id}/tokens",
            Endpoint::RevokeShopperTokens => "DELETE /v1/shoppers/{id}/tokens",
            Endpoint::GetWallet => "GET /v1/wallet",
            Endpoint::CreateDeal => "POST /v1/deals",
            Endpoint::GetDeal => "GET /v1/deals/{id}",
            Endpoint::PatchDeal => "PATCH /v1/deals/{id}",
            Endpoint::DealQrSvg => "GET /v1/deals/{id}/qr.svg",
            Endpoint::DealQrPng => "GET /v1/deals/{id}/qr.png",
            Endpoint::Feed => "GET /v1/feed",
            Endpoint::FeedStream => "GET /v1/feed/stream",
            Endpoint::Register => "POST /v1/deals/{id}/registrations",
            Endpoint::GetDraw => "GET /v1/deals/{id}/draw",
            Endpoint::GetDrawMe => "GET /v1/deals/{id}/draw/me",
            Endpoint::GetDrawRegistrants => "GET /v1/deals/{id}/draw/registrants",
            Endpoint::Buy => "POST /v1/deals/{id}/orders",
            Endpoint::CreateHold => "POST /v1/deals/{id}/holds",
            Endpoint::PayHold => "POST /v1/holds/{id}/payment",
            Endpoint::ReleaseHold => "DELETE /v1/holds/{id}",
            Endpoint::GetOrder => "GET /v1/orders/{id}",
            Endpoint::ListOrders => "GET /v1/orders",
            Endpoint::Review => "POST /v1/orders/{id}/review",
            Endpoint::Share => "POST /v1/orders/{id}/share",
            Endpoint::MerchantMe => "GET /v1/merchants/me",
            Endpoint::ExchangeToken => "POST /v1/tokens/exchange",
            Endpoint::Storefront => "GET /",
            Endpoint::MerchantPage => "GET /merchant",
            Endpoint::Healthz => "GET /healthz",
            Endpoint::Readyz => "GET /readyz",
            Endpoint::Metrics => "GET /metrics",
            Endpoint::OpenApi => "GET /v1/openapi.json",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Health and metrics answer even when the server sheds load.
    pub(crate) fn is_ops(self) -> bool {
        matches!(
            self,
            Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics
        )
    }

    /// Answers from the process alone (health, readiness, metrics, the
    /// document, the pages), never from a store call, so never `500
    /// internal`; every other endpoint may (a failed task, a state the
    /// engine calls inconsistent).
    pub(crate) fn answers_from_process(self) -> bool {
        matches!(
            self,
            Endpoint::Healthz
                | Endpoint::Readyz
                | Endpoint::Metrics
                | Endpoint::OpenApi
                | Endpoint::Storefront
                | Endpoint::MerchantPage
        )
    }

    /// Takes a JSON body, read (within its time and size bounds) before the
    /// request counts in flight: every change. Those named by their path
    /// alone (register, pay or release a hold, share) take no field, so
    /// their body is absent or `{}` (the strict-input rule of ARCHITECTURE.md
    /// binds every endpoint; `wire::parse_no_fields`).
    pub(crate) fn takes_body(self) -> bool {
        self.changes_state()
    }

    /// Reads its query itself, or ignores it. The pages ignore theirs (a
    /// link into a page carries what browsers and sharing add); so do the
    /// operational endpoints (a load balancer's or monitor's probe may add
    /// one) and the feed's stream (an EventSource library may put
    /// `lastEventId` there, which it reads). Every other endpoint refuses a
    /// parameter it does not take: `400 bad_request` naming it (docs/api.md
    /// "Input rules"; `handlers::no_query`).
    pub(crate) fn takes_query(self) -> bool {
        matches!(
            self,
            Endpoint::Feed
                | Endpoint::FeedStream
                | Endpoint::ListOrders
                | Endpoint::GetDraw
                | Endpoint::GetDrawRegistrants
                | Endpoint::Storefront
                | Endpoint::MerchantPage
                | Endpoint::Healthz
                | Endpoint::Readyz
                | Endpoint::Metrics
                | Endpoint::OpenApi
        )
    }

    /// Changes state, so waits for the journal and is shed while the
    /// journal is not ready.
    pub(crate) fn changes_state(self) -> bool {
        matches!(
            self,
            Endpoint::CreateMerchant
                | Endpoint::CreateShopper
                | Endpoint::CreateShoppersBulk
                | Endpoint::CreditWallet
                | Endpoint::CreditExternalWallet
                | Endpoint::IssueMerchantToken
                | Endpoint::RevokeMerchantTokens
                | Endpoint::IssueShopperToken
                | Endpoint::RevokeShopperTokens
                | Endpoint::CreateDeal
                | Endpoint::PatchDeal
                | Endpoint::Register
                | Endpoint::Buy
                | Endpoint::CreateHold
                | Endpoint::PayHold
                | Endpoint::ReleaseHold
                | Endpoint::Review
                | Endpoint::Share
                | Endpoint::ExchangeToken
        )
    }
}

/// A path and the endpoints its methods lead to.
#[derive(Debug, Clone, Copy)]
struct PathRoutes {
    get: Option<Endpoint>,
    post: Option<Endpoint>,
    patch: Option<Endpoint>,
    delete: Option<Endpoint>,
    allow: &'static str,
}

const NONE: PathRoutes = PathRoutes {
    get: None,
    post: None,
    patch: None,
    delete: None,
    allow: "",
};

pub(crate) struct Router {
    paths: matchit::Router<PathRoutes>,
}

/// A matched endpoint and its `{id}` parameter, borrowed from the path.
pub(crate) struct Matched<'p> {
    pub endpoint: Endpoint,
    pub id: &'p str,
}

impl Router {
    pub(crate) fn new() -> Router {
        let table: [(&str, PathRoutes); 31] = [
            (
                "/v1/merchants",
                PathRoutes {
                    post: Some(Endpoint::CreateMerchant),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/shoppers",
                PathRoutes {
                    post: Some(Endpoint::CreateShopper),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/admin/shoppers",
                PathRoutes {
                    post: Some(Endpoint::CreateShoppersBulk),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/merchants/{id}/tokens",
                PathRoutes {
                    post: Some(Endpoint::IssueMerchantToken),
                    delete: Some(Endpoint::RevokeMerchantTokens),
                    allow: "POST, DELETE",
                    ..NONE
                },
            ),
            (
                "/v1/shoppers/{id}/tokens",
                PathRoutes {
                    post: Some(Endpoint::IssueShopperToken),
                    delete: Some(Endpoint::RevokeShopperTokens),
                    allow: "POST, DELETE",
                    ..NONE
                },
            ),
            (
                "/v1/wallets/{id}/credits",
                PathRoutes {
                    post: Some(Endpoint::CreditWallet),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                // A static segment wins over `{id}`, and no shopper id is
                // `external`.
                "/v1/wallets/external/{id}/credits",
                PathRoutes {
                    post: Some(Endpoint::CreditExternalWallet),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/wallet",
                PathRoutes {
                    get: Some(Endpoint::GetWallet),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/deals",
                PathRoutes {
                    post: Some(Endpoint::CreateDeal),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}",
                PathRoutes {
                    get: Some(Endpoint::GetDeal),
                    patch: Some(Endpoint::PatchDeal),
                    allow: "GET, PATCH",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/qr.svg",
                PathRoutes {
                    get: Some(Endpoint::DealQrSvg),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/qr.png",
                PathRoutes {
                    get: Some(Endpoint::DealQrPng),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/feed",
                PathRoutes {
                    get: Some(Endpoint::Feed),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/feed/stream",
                PathRoutes {
                    get: Some(Endpoint::FeedStream),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/tokens/exchange",
                PathRoutes {
                    post: Some(Endpoint::ExchangeToken),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/merchants/me",
                PathRoutes {
                    get: Some(Endpoint::MerchantMe),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/orders/{id}/review",
                PathRoutes {
                    post: Some(Endpoint::Review),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/orders/{id}/share",
                PathRoutes {
                    post: Some(Endpoint::Share),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/",
                PathRoutes {
                    get: Some(Endpoint::Storefront),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/merchant",
                PathRoutes {
                    get: Some(Endpoint::MerchantPage),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/draw",
                PathRoutes {
                    get: Some(Endpoint::GetDraw),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/draw/me",
                PathRoutes {
                    get: Some(Endpoint::GetDrawMe),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/draw/registrants",
                PathRoutes {
                    get: Some(Endpoint::GetDrawRegistrants),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/registrations",
                PathRoutes {
                    post: Some(Endpoint::Register),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/orders",
                PathRoutes {
                    post: Some(Endpoint::Buy),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/deals/{id}/holds",
                PathRoutes {
                    post: Some(Endpoint::CreateHold),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/holds/{id}/payment",
                PathRoutes {
                    post: Some(Endpoint::PayHold),
                    allow: "POST",
                    ..NONE
                },
            ),
            (
                "/v1/holds/{id}",
                PathRoutes {
                    delete: Some(Endpoint::ReleaseHold),
                    allow: "DELETE",
                    ..NONE
                },
            ),
            (
                "/v1/orders/{id}",
                PathRoutes {
                    get: Some(Endpoint::GetOrder),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/orders",
                PathRoutes {
                    get: Some(Endpoint::ListOrders),
                    allow: "GET",
                    ..NONE
                },
            ),
            (
                "/v1/openapi.json",
                PathRoutes {
                    get: Some(Endpoint::OpenApi),
                    allow: "GET",
                    ..NONE
                },
            ),
        ];
        let ops = [
            ("/healthz", Endpoint::Healthz),
            ("/readyz", Endpoint::Readyz),
            ("/metrics", Endpoint::Metrics),
        ];
        let mut paths = matchit::Router::new();
        let ops = ops.into_iter().map(|(path, endpoint)| {
            (
                path,
                PathRoutes {
                    get: Some(endpoint),
                    allow: "GET",
                    ..NONE
                },
            )
        });
        for (path, routes) in table.into_iter().chain(ops) {
            // invariant: the table above is fixed and free of conflicts (a
            // unit test builds it).
            paths
                .insert(path, routes)
                .expect("the route table is valid");
        }
        Router { paths }
    }

    pub(crate) fn route<'p>(&self, method: &Method, path: &'p str) -> Result<Matched<'p>, Error> {
        let found = self.paths.at(path).map_err(|_| Error::NotFound("path"))?;
        let routes = found.value;
        let endpoint = match *method {
            Method::GET | Method::HEAD => routes.get,
            Method::POST => routes.post,
            Method::PATCH => routes.patch,
            Method::DELETE => routes.delete,
            _ => None,
        };
        let endpoint = endpoint.ok_or(Error::MethodNotAllowed {
            allow: routes.allow,
        })?;
        Ok(Matched {
            endpoint,
            id: found.params.get("id").unwrap_or(""),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_reachable_and_indexed_in_order() {
        let router = Router::new();
        for (index, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint.index(), index);
            let (method, pattern) = endpoint.name().split_once(' ').unwrap();
            let path = pattern.replace("{id}", "x_1");
            let method: Method = method.parse().unwrap();
            assert_eq!(router.route(&method, &path).unwrap().endpoint, endpoint);
        }
    }

    #[test]
    fn a_credit_by_external_id_and_by_shopper_id_route_apart() {
        let router = Router::new();
        let matched = router
            .route(&Method::POST, "/v1/wallets/external/auth0%7C1/credits")
            .unwrap();
        assert_eq!(
            (matched.endpoint, matched.id),
            (Endpoint::CreditExternalWallet, "auth0%7C1")
        );
        let matched = router
            .route(&Method::POST, "/v1/wallets/s_1/credits")
            .unwrap();
        assert_eq!(
            (matched.endpoint, matched.id),
            (Endpoint::CreditWallet, "s_1")
        );
        assert!(matches!(
            router.route(&Method::GET, "/v1/wallets/external/x/credits"),
            Err(Error::MethodNotAllowed { allow: "POST" })
        ));
    }

    #[test]
    fn ids_are_borrowed_and_methods_checked() {
        let router = Router::new();
        let matched = router
            .route(&Method::POST, "/v1/deals/d_2a/orders")
            .unwrap();
        assert_eq!((matched.endpoint, matched.id), (Endpoint::Buy, "d_2a"));
        assert!(matches!(
            router.route(&Method::PUT, "/v1/deals/d_2a"),
            Err(Error::MethodNotAllowed {
                allow: "GET, PATCH"
            })
        ));
        assert!(matches!(
            router.route(&Method::GET, "/v2/deals"),
            Err(Error::NotFound(_))
        ));
    }
}
