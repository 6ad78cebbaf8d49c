//! The contract as a document: `gateway/openapi.yaml`, an OpenAPI 3.1
//! description of HTTP API v1 written by hand, embedded in the binary and
//! served as JSON at `GET /v1/openapi.json`.
//!
//! The YAML is converted to JSON once, when a server is built, so every
//! request answers the same prepared bytes. The document is "checked
//! against the code" rather than generated from it: a test here proves that
//! every route of [`crate::router`] is in the document with its method and
//! that everything the document lists is routed, and `tests/api/fuzz.rs` runs
//! schemathesis against a real server to check that answers match it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::error::Error;
use crate::router::Endpoint;

/// The document as written (YAML).
const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// The document, ready to serve as JSON.
pub(crate) struct OpenApi {
    json: Bytes,
    /// The statuses each endpoint's operation lists, by [`Endpoint::index`].
    statuses: Vec<Vec<u16>>,
}

impl OpenApi {
    /// Converts [`OPENAPI_YAML`] to JSON.
    ///
    /// # Errors
    /// [`Error::Config`] when the embedded YAML does not parse (a unit test
    /// proves it does, so a built binary never meets this).
    pub(crate) fn new() -> Result<OpenApi, Error> {
        let document: serde_json::Value = serde_norway::from_str(OPENAPI_YAML)
            .map_err(|error| Error::Config(format!("gateway/openapi.yaml: {error}")))?;
        let json = serde_json::to_vec(&document)
            .map_err(|error| Error::Config(format!("gateway/openapi.yaml as JSON: {error}")))?;
        let statuses = Endpoint::ALL
            .iter()
            .map(|endpoint| operation_statuses(&document, *endpoint))
            .collect();
        Ok(OpenApi {
            json: Bytes::from(json),
            statuses,
        })
    }

    /// The statuses the contract lists for `endpoint`'s operation (its
    /// `responses` keys), in the document's order; empty for an operation
    /// the document lacks (a unit test proves there is none).
    pub(crate) fn statuses(&self, endpoint: Endpoint) -> &[u16] {
        self.statuses
            .get(endpoint.index())
            .map_or(&[], Vec::as_slice)
    }

    /// `200` with the document as `application/json`.
    pub(crate) fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.json.clone()));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// The `responses` keys of `endpoint`'s operation in `document` that are
/// statuses (not `default`).
fn operation_statuses(document: &serde_json::Value, endpoint: Endpoint) -> Vec<u16> {
    let Some((method, path)) = endpoint.name().split_once(' ') else {
        return Vec::new();
    };
    let method = method.to_lowercase();
    let Some(paths) = document["paths"].as_object() else {
        return Vec::new();
    };
    paths
        .iter()
        .filter(|(documented, _)| pattern(documented) == pattern(path))
        .filter_map(|(_, operations)| operations.get(&method)?["responses"].as_object())
        .flat_map(|responses| responses.keys().filter_map(|status| status.parse().ok()))
        .collect()
}

/// `/v1/deals/{deal_id}/orders` -> `/v1/deals/{}/orders`: the router calls
/// every parameter `{id}`, the document names each.
fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                out.push_str("{}");
            }
            '}' => in_parameter = false,
            _ if in_parameter => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use hyper::Method;
    use serde_json::Value;

    use super::*;
    use crate::router::{Endpoint, Router};

    fn document() -> Value {
        let served = OpenApi::new().expect("the embedded document parses");
        serde_json::from_slice(&served.json).expect("the served document is JSON")
    }

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    /// Every `METHOD pattern` the document describes.
    fn documented(document: &Value) -> BTreeSet<(String, String)> {
        let paths = document["paths"].as_object().expect("paths is an object");
        paths
            .iter()
            .flat_map(|(path, operations)| {
                METHODS
                    .into_iter()
                    .filter(|method| operations.get(*method).is_some())
                    .map(|method| (method.to_uppercase(), pattern(path)))
            })
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let routed: BTreeSet<(String, String)> = Endpoint::ALL
            .into_iter()
            .map(|endpoint| {
                let (method, path) = endpoint
                    .name()
                    .split_once(' ')
                    .expect("a route name is `METHOD /path`");
                (method.to_owned(), pattern(path))
            })
            .collect();
        let documented = documented(&document);
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.yaml: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "operations in openapi.yaml the router does not serve: {unrouted:?}"
        );

        // And the router really serves each documented path with its method.
        let router = Router::new();
        for (method, path) in &documented {
            let concrete = path.replace("{}", "x_1");
            let method: Method = method.parse().expect("an HTTP method");
            let matched = router
                .route(&method, &concrete)
                .unwrap_or_else(|error| panic!("{method} {concrete}: {error}"));
            assert_eq!(pattern(matched.endpoint.name()), format!("{method} {path}"));
        }
    }

    /// Collects every `$ref` in `value`.
    fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("$ref", Value::String(target)) => found.push(target),
                        _ => references(child, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_endpoint_has_its_documented_statuses() {
        let served = OpenApi::new().expect("the embedded document parses");
        for endpoint in Endpoint::ALL {
            let statuses = served.statuses(endpoint);
            assert!(
                statuses.iter().any(|status| (200..300).contains(status)),
                "{}: {statuses:?} has no success",
                endpoint.name()
            );
        }
        assert_eq!(served.statuses(Endpoint::Readyz), [200, 400, 405, 501, 503]);
        assert!(served.statuses(Endpoint::Buy).contains(&409));
        assert!(!served.statuses(Endpoint::Healthz).contains(&201));
    }

    #[test]
    fn every_reference_resolves() {
        let document = document();
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(found.len() > 50, "the document uses its components");
        for target in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target} is not local"));
            assert!(
                document.pointer(pointer).is_some(),
                "{target} names nothing"
            );
        }
    }

    /// The statuses the request path can answer an operation whatever the
    /// handler does (gateway/src/app.rs and error.rs): framing (`400`, a
    /// transfer coding: `501`), another method of its path (`405` with
    /// `Allow`), the request's time bound or shedding (`503`); with a
    /// body: its time (`408`), size (`413`) and fields (`422`); with a
    /// token: `401`.
    fn request_path_statuses(endpoint: Endpoint, secured: bool) -> BTreeSet<&'static str> {
        let mut statuses = BTreeSet::from(["400", "405", "501", "503"]);
        if endpoint.takes_body() {
            statuses.extend(["408", "413", "422"]);
        }
        if secured {
            statuses.insert("401");
        }
        statuses
    }

    #[test]
    fn every_operation_lists_every_status_its_request_path_can_answer() {
        let document = document();
        let mut missing = Vec::new();
        for endpoint in Endpoint::ALL {
            let (method, path) = endpoint.name().split_once(' ').expect("METHOD /path");
            let operation = document["paths"]
                .as_object()
                .expect("paths")
                .iter()
                .find(|(documented, _)| pattern(documented) == pattern(path))
                .and_then(|(_, operations)| operations.get(method.to_lowercase()))
                .unwrap_or_else(|| panic!("{method} {path} is documented"));
            let secured = operation.get("security") != Some(&Value::Array(Vec::new()));
            let listed = operation["responses"].as_object().expect("responses");
            for status in request_path_statuses(endpoint, secured) {
                if !listed.contains_key(status) {
                    missing.push(format!("{method} {path}: {status}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "statuses missing from openapi.yaml: {missing:#?}"
        );
        // A 405 names the path's methods.
        let allow = document.pointer("/components/responses/MethodNotAllowed/headers/Allow");
        assert!(allow.is_some(), "405 documents its Allow header");
    }

    #[test]
    fn every_contract_error_code_is_in_the_error_schema() {
        let document = document();
        let codes: BTreeSet<&str> = document
            .pointer("/components/schemas/Error/properties/error/properties/code/enum")
            .and_then(Value::as_array)
            .expect("the Error schema lists its codes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // docs/api.md's error table, status by status.
        for code in [
            "malformed_json",
            "bad_request",
            "unauthorized",
            "insufficient_funds",
            "forbidden",
            "not_registered",
            "not_found",
            "method_not_allowed",
            "request_timeout",
            "sold_out",
            "purchase_limit_reached",
            "hold_expired",
            "hold_settled",
            "deal_paused",
            "already_reviewed",
            "already_registered",
            "deal_ended",
            "payload_too_large",
            "invalid",
            "idempotency_key_reused",
            "not_started",
            "rate_limited",
            "internal",
            "not_implemented",
            "overloaded",
            "unavailable",
        ] {
            assert!(codes.contains(code), "{code} is missing");
        }
    }
}
