//! Property tests of the head's judge: any query and header values, through both policies
//! with tokens required, never panic. A few hundred cases.

use proptest::prelude::*;

use crate::auth::access::{check_head, Access, PublishAccess, StreamAccess};
use crate::wire::http::{self, RequestParser, Route, Step};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        ..ProptestConfig::default()
    }
}

/// A node that needs tokens for everything, so hostile heads reach the token checks.
static ACCESS: std::sync::LazyLock<Access> = std::sync::LazyLock::new(|| {
    let trust = |flag| {
        let key = "0123456789abcdef0123456789abcdef".parse().unwrap();
        std::sync::Arc::new(
            crate::auth::jwt::Trust::load(
                flag,
                vec![key],
                crate::auth::jwt::Expect {
                    audience: Some("edge".into()),
                    issuer: None,
                },
            )
            .unwrap(),
        )
    };
    Access {
        publish: PublishAccess::new(
            Some("static".into()),
            Some(trust("--publish-jwt")),
            vec!["127.0.0.0/8".parse().unwrap()],
        ),
        streams: StreamAccess::new(Some(trust("--subscribe-jwt")), true),
    }
});

proptest! {
    #![proptest_config(cases())]

    /// (d) Judging a head never panics, whatever its query and header values.
    #[test]
    fn judging_any_head_never_panics(query in any::<String>(), name in any::<String>(), value in any::<String>()) {
        let wire = format!("POST /broadcast?{query} HTTP/1.1\r\n{name}: {value}\r\nHost: {value}\r\nOrigin: {value}\r\nAuthorization: Bearer {value}\r\nCookie: a=b; sse_edge_token={value}\r\n\r\n");
        let mut parser = RequestParser::default();
        parser.feed(wire.as_bytes());
        if parser.advance(256) == Ok(Step::Head) {
            let head = parser.head().unwrap();
            let route = http::route(head.method, &head.path);
            // Every route through both policies, tokens required: hostile Authorization
            // and Cookie values reach the token checks.
            for route in [route, Route::Broadcast, Route::Stream] {
                let _ = check_head(route, head, &ACCESS, Some([127, 0, 0, 1].into()), 0, false);
            }
        }
    }
}
