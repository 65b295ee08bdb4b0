//! The files pages load, embedded in the binary: the dashboard's own stylesheet, script and
//! icon, and the vendored htmx, its SSE extension and uPlot (`assets/vendor/`, with their
//! licenses and where they came from). Nothing is fetched from a CDN or npm at build or run
//! time.
//!
//! Pages link each file as `/assets/NAME?v=HASH`; an answer to a request carrying the current
//! hash may be cached for a year, any other is revalidated.

use std::collections::HashMap;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub const ASSETS: &[Asset] = &[
    Asset {
        name: "dashboard.css",
        content_type: CSS,
        bytes: include_bytes!("../../assets/dashboard.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: JS,
        bytes: include_bytes!("../../assets/dashboard.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../assets/favicon.svg"),
    },
    Asset {
        name: "htmx.min.js",
        content_type: JS,
        bytes: include_bytes!("../../assets/vendor/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "htmx-ext-sse.min.js",
        content_type: JS,
        bytes: include_bytes!("../../assets/vendor/htmx-ext-sse-2.2.4.min.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: JS,
        bytes: include_bytes!("../../assets/vendor/uPlot-1.6.32.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: CSS,
        bytes: include_bytes!("../../assets/vendor/uPlot-1.6.32.min.css"),
    },
];

static HASHES: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| (a.name, hex::encode(&Sha256::digest(a.bytes)[..6])))
        .collect()
});

pub fn get(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The content hash of asset `name` (its cache key).
pub fn hash(name: &str) -> Option<&'static str> {
    HASHES.get(name).map(String::as_str)
}

/// Where a page links asset `name`.
pub fn href(name: &str) -> String {
    format!(
        "/assets/{name}?v={}",
        hash(name).expect("pages link only embedded assets")
    )
}
