//! A deal's QR code (`GET /v1/deals/{id}/qr.svg`, `qr.png`): both images
//! read back with `rqrr` (an independent decoder) to the storefront's link
//! to the deal under `--public-url`, or under the address listened on.

use flashsale_testkit::qr::{decode_grey, decode_png};

use crate::helpers::{TestServer, client, start, start_with};

/// `GET path` as bytes: status, `Content-Type`, `Cache-Control`, body.
async fn image(t: &TestServer, path: &str) -> (u16, String, String, Vec<u8>) {
    let response = client()
        .get(format!("{}{path}", t.url))
        .send()
        .await
        .expect("the server answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (content_type, cache) = (header("content-type"), header("cache-control"));
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body").to_vec();
    (status, content_type, cache, body)
}

/// The dark modules of the server's SVG (`M<x> <y>h<w>v<h>H<x>V<y>` rects
/// on a white square), drawn into a grey image and decoded.
fn decode_svg(svg: &str) -> Vec<String> {
    let side: usize = svg
        .split(r#"width=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|width| width.parse().ok())
        .expect("the SVG's width");
    let mut pixels = vec![255u8; side * side];
    let path = svg
        .split(r#" d=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the SVG's path");
    for rect in path.split('M').filter(|rect| !rect.is_empty()) {
        let numbers: Vec<usize> = rect
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().expect("a coordinate"))
            .collect();
        let [x, y, width, height, ..] = numbers[..] else {
            panic!("a rect: {rect}");
        };
        for row in y..y + height {
            pixels[row * side + x..row * side + x + width].fill(0);
        }
    }
    decode_grey(side, side, |x, y| pixels[y * side + x])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deals_qr_code_links_to_its_card_under_the_public_url() {
    let t = start_with(|config| {
        config.public_url = Some("https://shop.example/flash/".parse().expect("a URL"));
    })
    .await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "999.00", 10, 1).await;
    let link = format!("https://shop.example/flash/?deal={deal}");

    let (status, content_type, cache, png) = image(&t, &format!("/v1/deals/{deal}/qr.png")).await;
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    assert_eq!(cache, "public, max-age=3600");
    assert_eq!(decode_png(&png), std::slice::from_ref(&link));

    let (status, content_type, cache, svg) = image(&t, &format!("/v1/deals/{deal}/qr.svg")).await;
    assert_eq!((status, content_type.as_str()), (200, "image/svg+xml"));
    assert_eq!(cache, "public, max-age=3600");
    let svg = String::from_utf8(svg).expect("an SVG is text");
    assert!(
        svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert_eq!(decode_svg(&svg), [link]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_url_the_link_names_the_address_listened_on() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "999.00", 10, 1).await;
    let (status, _, _, png) = image(&t, &format!("/v1/deals/{deal}/qr.png")).await;
    assert_eq!(status, 200);
    assert_eq!(decode_png(&png), [format!("{}/?deal={deal}", t.url)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_deal_has_no_code_and_the_images_take_no_parameter() {
    let t = start().await;
    for format in ["svg", "png"] {
        t.get(&format!("/v1/deals/d_fff/qr.{format}"), None)
            .await
            .refused(404, "not_found");
        let merchant = t.merchant("Xiaomi").await;
        let deal = t.deal(&merchant, "1.00", 1, 1).await;
        t.get(&format!("/v1/deals/{deal}/qr.{format}?size=9999"), None)
            .await
            .refused(400, "bad_request");
    }
}
