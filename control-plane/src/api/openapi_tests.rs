//! Keeps docs/api/openapi.yaml in step with the router: every `.route(..)` in mod.rs
//! must be documented with the same methods, and every documented path must exist.
//! Parsing is deliberately simple (no YAML or Rust parser): see the two helpers.

use std::collections::BTreeSet;

const ROUTER_SOURCE: &str = include_str!("mod.rs");
const OPENAPI: &str = include_str!("../../../docs/api/openapi.yaml");

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// `(path, method)` pairs of every `.route("PATH", m1(..).m2(..)...)` call in the router
/// source, with axum's wildcard `{*name}` written as OpenAPI's `{name}`.
fn router_routes(source: &str) -> BTreeSet<(String, String)> {
    let source = source.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut routes = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let after_quote = rest.trim_start().strip_prefix('"').expect("route path is a string literal");
        let end = after_quote.find('"').unwrap();
        let path = after_quote[..end].replace("{*", "{");
        let args = after_quote[end + 1..].trim_start().strip_prefix(',').expect("route has a method router");
        // The method router runs until the `)` that closes `.route(`; methods are the
        // calls at depth 0 in it (`put(a).get(b)`), handlers sit deeper.
        let mut depth = 0usize;
        let mut ident = String::new();
        let mut methods = Vec::new();
        for c in args.chars() {
            match c {
                '(' => {
                    if depth == 0 && METHODS.contains(&ident.as_str()) {
                        methods.push(ident.clone());
                    }
                    ident.clear();
                    depth += 1;
                }
                ')' if depth == 0 => break,
                ')' => {
                    ident.clear();
                    depth -= 1;
                }
                c if c.is_ascii_alphanumeric() || c == '_' => ident.push(c),
                _ => ident.clear(),
            }
        }
        assert!(!methods.is_empty(), "no method found for route {path}");
        for method in methods {
            routes.insert((path.clone(), method));
        }
    }
    routes
}

/// `(path, method)` pairs under the top-level `paths:` key: paths are `  /path:` lines,
/// methods `    get:` lines below them.
fn documented_routes(doc: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in doc.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            if !p.starts_with(' ') {
                let p = p.strip_suffix(':').expect("path line ends with ':'");
                path = Some(format!("/{}", p.trim_matches(|c| c == '"' || c == '\'')));
                continue;
            }
        }
        if let (Some(m), Some(p)) = (line.strip_prefix("    "), &path) {
            if let Some(m) = m.strip_suffix(':') {
                if METHODS.contains(&m) {
                    routes.insert((p.clone(), m.to_owned()));
                }
            }
        }
    }
    routes
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let router = router_routes(ROUTER_SOURCE);
    let documented = documented_routes(OPENAPI);
    assert!(router.len() >= 20, "router parsing found too little: {router:?}");
    assert!(router.contains(&("/v1/streams/{name}".to_owned(), "delete".to_owned())), "{router:?}");
    assert!(router.contains(&("/healthz".to_owned(), "get".to_owned())), "{router:?}");

    let undocumented: Vec<_> = router.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes missing from docs/api/openapi.yaml: {undocumented:?}");

    let unrouted: Vec<_> = documented.difference(&router).collect();
    assert!(unrouted.is_empty(), "documented in docs/api/openapi.yaml but not routed: {unrouted:?}");

    let router_paths: BTreeSet<&String> = router.iter().map(|(p, _)| p).collect();
    for (path, _) in &documented {
        if path.starts_with("/v1") {
            assert!(router_paths.contains(path), "documented /v1 path {path} is not in the router");
        }
    }
}

#[test]
fn document_is_openapi_3_0_3_with_bearer_auth() {
    assert!(OPENAPI.lines().any(|l| l.trim_end() == "openapi: 3.0.3"), "openapi: 3.0.3 missing");
    let lines: Vec<&str> = OPENAPI.lines().collect();
    let scheme = lines.iter().position(|l| l.trim_end() == "    bearerAuth:").expect("bearerAuth scheme");
    let body: Vec<&str> =
        lines[scheme + 1..].iter().take_while(|l| l.starts_with("      ")).copied().collect();
    assert!(body.iter().any(|l| l.trim() == "type: http"), "bearerAuth is an http scheme: {body:?}");
    assert!(body.iter().any(|l| l.trim() == "scheme: bearer"), "bearerAuth uses bearer: {body:?}");
    assert!(
        lines.contains(&"security:") && lines.contains(&"  - bearerAuth: []"),
        "bearer applies by default"
    );
    // Only the open probes and the viewer-facing routing opt out of the token.
    let mut path = "";
    for line in &lines {
        if let Some(p) = line.strip_prefix("  /") {
            path = p;
        } else if line.trim_end() == "      security: []" {
            let public = path.starts_with("v1/route/");
            assert!(!path.starts_with("v1") || public, "/{path} must not opt out of bearer auth");
        }
    }
}

#[test]
fn parsers_handle_multi_line_routes_and_chained_methods() {
    let source = r#"
        Router::new()
            .route("/a", get(x::a))
            .route(
                "/b/{*name}",
                put(x::b).get(x::c)
                    .delete(x::d),
            )
            .route_layer(middleware::from_fn_with_state(s, authorize));
    "#;
    let got = router_routes(source);
    let want: BTreeSet<(String, String)> =
        [("/a", "get"), ("/b/{name}", "put"), ("/b/{name}", "get"), ("/b/{name}", "delete")]
            .into_iter()
            .map(|(p, m)| (p.to_owned(), m.to_owned()))
            .collect();
    assert_eq!(got, want);

    let doc = "openapi: 3.0.3\npaths:\n  /a:\n    parameters: []\n    get:\n      summary: x\n  /b/{name}:\n    put:\n      x: 1\ncomponents:\n  schemas:\n    get:\n      type: object\n";
    let want: BTreeSet<(String, String)> = [("/a", "get"), ("/b/{name}", "put")]
        .into_iter()
        .map(|(p, m)| (p.to_owned(), m.to_owned()))
        .collect();
    assert_eq!(documented_routes(doc), want);
}
