// swift-tools-version:6.0
import PackageDescription

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
]

let package = Package(
    name: "weir",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "weir", targets: ["weir"]),
        .executable(name: "weir-fleet-sim", targets: ["weir-fleet-sim"]),
        .executable(name: "weir-fuzz", targets: ["weir-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.27.0"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.35.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.0"),
        .package(url: "https://github.com/vapor/sql-kit.git", from: "3.36.0"),
        .package(url: "https://github.com/vapor/sqlite-kit.git", from: "4.5.0"),
        .package(url: "https://github.com/vapor/postgres-kit.git", from: "2.17.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // The core: stage protocols, registry, config loading and validation, the data-plane glue and metrics.
        .target(
            name: "WeirCore",
            dependencies: nio + [
                "CWeirSystem",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/WeirCore"
        ),
        // System calls Swift cannot make itself: a thread with a descriptor table of its own.
        .target(name: "CWeirSystem", path: "Sources/CWeirSystem"),
        // libbpf from the system, and the small C layer over it that the eBPF stages use.
        .systemLibrary(
            name: "CLibbpf",
            path: "Sources/CLibbpf",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev"])]
        ),
        .target(
            name: "CWeirBPF",
            dependencies: ["CLibbpf"],
            path: "Sources/CWeirBPF"
        ),
        // libnftables (JSON API) for rulesets; libnftnl/libmnl under a small C layer for set elements and routes.
        .systemLibrary(
            name: "CLibcrypto",
            path: "Sources/CLibcrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CNftables",
            path: "Sources/CNftables",
            pkgConfig: "libnftables",
            providers: [.apt(["libnftables-dev"])]
        ),
        .systemLibrary(
            name: "CLibqrencode",
            path: "Sources/CLibqrencode",
            pkgConfig: "libqrencode",
            providers: [.apt(["libqrencode-dev"])]
        ),
        .systemLibrary(
            name: "CLibnftnl",
            path: "Sources/CLibnftnl",
            pkgConfig: "libnftnl",
            providers: [.apt(["libnftnl-dev", "libmnl-dev"])]
        ),
        .target(
            name: "CWeirNetlink",
            dependencies: ["CLibnftnl"],
            path: "Sources/CWeirNetlink",
            // libnftnl's pkg-config file lists libmnl as private only.
            linkerSettings: [.linkedLibrary("nftnl"), .linkedLibrary("mnl")]
        ),
        // Compiles bpf/*.bpf.c with clang's BPF target and embeds the objects in the target that uses it.
        .plugin(
            name: "BPFObjectPlugin",
            capability: .buildTool(),
            path: "Plugins/BPFObjectPlugin"
        ),
        // Stage families, one target each.
        .target(
            name: "WeirListeners",
            dependencies: ["WeirCore"] + nio + [
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSOCKS", package: "swift-nio-extras"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            path: "plugins/listeners",
            exclude: ["tcp/README.md", "udp/README.md", "socks5/README.md", "http/README.md", "tls_sni/README.md", "reverse/README.md"],
            resources: [
                .embedInCode("tcp/listen.tcp.sample.yaml"), .embedInCode("udp/listen.udp.sample.yaml"),
                .embedInCode("socks5/listen.socks5.sample.yaml"), .embedInCode("http/listen.http.sample.yaml"),
                .embedInCode("tls_sni/listen.tls_sni.sample.yaml"), .embedInCode("reverse/listen.reverse.sample.yaml"),
            ]
        ),
        .target(
            name: "WeirConnectors",
            dependencies: ["WeirCore", .product(name: "Prometheus", package: "swift-prometheus")] + nio,
            path: "plugins/connectors",
            exclude: ["tcp/README.md", "udp/README.md", "relay/README.md", "reverse/README.md"],
            resources: [
                .embedInCode("tcp/connect.tcp.sample.yaml"), .embedInCode("udp/connect.udp.sample.yaml"),
                .embedInCode("relay/connect.relay.sample.yaml"), .embedInCode("reverse/connect.reverse.sample.yaml"),
            ]
        ),
        .target(
            name: "WeirLimiters",
            dependencies: ["WeirCore"] + nio,
            path: "plugins/limiters",
            exclude: ["bandwidth/README.md"],
            resources: [.embedInCode("bandwidth/limit.bandwidth.sample.yaml")]
        ),
        .target(
            name: "WeirCounters",
            dependencies: ["WeirCore", "CWeirBPF", .product(name: "Logging", package: "swift-log")],
            path: "plugins/counters",
            exclude: ["ebpf/README.md"],
            resources: [.embedInCode("ebpf/count.ebpf.sample.yaml")],
            plugins: ["BPFObjectPlugin"]
        ),
        .target(
            name: "WeirEnforcers",
            dependencies: nio + ["WeirCore", "CNftables", "CWeirNetlink", .product(name: "Logging", package: "swift-log")],
            path: "plugins/enforcers",
            exclude: ["nftables/README.md"],
            resources: [.embedInCode("nftables/enforce.nftables.sample.yaml")]
        ),
        .target(
            name: "WeirRoutes",
            dependencies: ["WeirCore", "CWeirNetlink", .product(name: "Logging", package: "swift-log")],
            path: "plugins/routes",
            exclude: ["gateway/README.md"],
            resources: [.embedInCode("gateway/route.gateway.sample.yaml")]
        ),
        // What the wireguard stage and the coordinator's VPN resources share: keys, address pools, client files.
        .target(
            name: "WeirVPN",
            dependencies: ["WeirCore", .product(name: "Crypto", package: "swift-crypto")],
            path: "Sources/WeirVPN"
        ),
        .target(
            name: "WeirTunnels",
            dependencies: [
                "WeirCore", "WeirVPN", "CWeirNetlink", "CWeirSystem", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ] + nio,
            path: "plugins/tunnels",
            exclude: ["wireguard/README.md"],
            resources: [.embedInCode("wireguard/wireguard.sample.yaml")]
        ),
        .target(
            name: "WeirShapers",
            dependencies: ["WeirCore", "CWeirBPF", "CWeirNetlink", .product(name: "Logging", package: "swift-log")] + nio,
            path: "plugins/shapers",
            exclude: ["tc/README.md"],
            resources: [.embedInCode("tc/shape.tc.sample.yaml")],
            plugins: ["BPFObjectPlugin"]
        ),
        .target(
            name: "WeirTransforms",
            dependencies: [
                "WeirCore", "CLibcrypto", .product(name: "Crypto", package: "swift-crypto"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"), .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ] + nio,
            path: "plugins/transforms",
            exclude: ["aead/README.md", "tls/README.md", "tls/example", "websocket/README.md", "padding/README.md", "mux/README.md"],
            resources: [
                .embedInCode("aead/transform.aead.sample.yaml"), .embedInCode("tls/transform.tls.sample.yaml"),
                .embedInCode("websocket/transform.websocket.sample.yaml"), .embedInCode("padding/transform.padding.sample.yaml"),
                .embedInCode("mux/transform.mux.sample.yaml"),
            ]
        ),
        // The one list of built-in stages.
        .target(
            name: "WeirDNS",
            dependencies: nio + [
                "WeirCore", "CWeirSystem", .product(name: "NIOExtras", package: "swift-nio-extras"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "plugins/dns",
            exclude: ["filter/README.md", "filter/example"],
            resources: [.embedInCode("filter/dns.filter.sample.yaml")]
        ),
        .target(
            name: "WeirStages",
            dependencies: ["WeirCore", "WeirDNS", "WeirListeners", "WeirConnectors", "WeirLimiters", "WeirCounters", "WeirEnforcers", "WeirRoutes", "WeirShapers", "WeirTransforms", "WeirTunnels"],
            path: "Sources/WeirStages"
        ),
        // The agent: reload planning and supervision, the metrics endpoint, logging.
        .target(
            name: "WeirAgent",
            dependencies: nio + [
                "WeirCore", "WeirCoordinatorProtocol", "CWeirNetlink",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Sources/WeirAgent"
        ),
        // What agents and the coordinator say to each other over their WebSocket, and the bundle's version.
        .target(
            name: "WeirCoordinatorProtocol",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            path: "Sources/WeirCoordinatorProtocol"
        ),
        // The coordinator: registry, desired state in SQLite or PostgreSQL, distribution, REST API.
        .target(
            name: "WeirCoordinator",
            dependencies: nio + [
                "WeirCore", "WeirCoordinatorProtocol", "WeirVPN", "CLibqrencode",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "HummingbirdOTP", package: "hummingbird-auth"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "SQLKit", package: "sql-kit"),
                .product(name: "SQLiteKit", package: "sqlite-kit"),
                .product(name: "PostgresKit", package: "postgres-kit"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/WeirCoordinator",
            exclude: ["Console/Resources/common-passwords.LICENSE.txt"],
            // The console's pages, styles, script and password list are in the binary: one file to install.
            resources: [
                .embedInCode("API/openapi.json"),
                .embedInCode("Console/Resources/common-passwords.txt"),
                .embedInCode("Console/Resources/templates"),
                .embedInCode("Console/Resources/assets"),
            ]
        ),
        .executableTarget(
            name: "weir",
            dependencies: [
                "WeirCore", "WeirAgent", "WeirStages", "WeirCoordinator", "WeirTunnels",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/weir"
        ),
        // Simulated agents for the coordinator benchmark (bench/coordinator-bench.sh).
        .executableTarget(
            name: "weir-fleet-sim",
            dependencies: [
                "WeirCoordinatorProtocol", .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/weir-fleet-sim"
        ),
        // Every parser of untrusted input as a libFuzzer target (`make fuzz`); the ordinary build replays inputs.
        .executableTarget(
            name: "weir-fuzz",
            dependencies: [
                "WeirCore", "WeirStages", "WeirListeners", "WeirTransforms", "WeirEnforcers", "WeirDNS", "WeirCoordinator", "WeirCoordinatorProtocol",
                "CWeirSystem",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            path: "Sources/weir-fuzz"
        ),
        .testTarget(
            name: "WeirCoreTests",
            dependencies: ["WeirCore", "WeirStages"],
            path: "Tests/WeirCoreTests"
        ),
        .testTarget(
            name: "WeirPluginTests",
            dependencies: [
                "WeirCore", "WeirStages", "WeirLimiters", "WeirListeners", "WeirConnectors", "WeirCounters", "WeirEnforcers", "WeirRoutes",
                "WeirShapers", "WeirTransforms", "WeirTunnels", "WeirVPN", "CWeirNetlink", "WeirDNS", .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"), .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            path: "Tests/WeirPluginTests"
        ),
        .testTarget(
            name: "WeirAgentTests",
            dependencies: nio + [
                "WeirCore", "WeirAgent", "WeirStages", "WeirCoordinatorProtocol", .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/WeirAgentTests"
        ),
        .testTarget(
            name: "WeirCoordinatorTests",
            dependencies: nio + [
                "WeirCoordinator", "WeirCoordinatorProtocol", "WeirCore", "WeirStages", .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Tests/WeirCoordinatorTests"
        ),
        // Runs the real `weir` binary against real sockets.
        .testTarget(
            name: "WeirIntegrationTests",
            dependencies: ["weir"],
            path: "Tests/WeirIntegrationTests"
        ),
    ]
)
