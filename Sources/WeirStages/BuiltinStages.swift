import WeirConnectors
import WeirCore
import WeirCounters
import WeirDNS
import WeirEnforcers
import WeirLimiters
import WeirListeners
import WeirRoutes
import WeirShapers
import WeirTransforms
import WeirTunnels

/// Every stage type built into the agent. Adding a stage is one line here.
public enum BuiltinStages {
    public static let registry = StageRegistry([
        ListenTCPConfig.self,
        ListenUDPConfig.self,
        ListenSOCKS5Config.self,
        ListenHTTPConfig.self,
        ListenTLSSNIConfig.self,
        ConnectTCPConfig.self,
        ConnectUDPConfig.self,
        ConnectRelayConfig.self,
        LimitBandwidthConfig.self,
        CountEBPFConfig.self,
        EnforceNftablesConfig.self,
        RouteGatewayConfig.self,
        ShapeTCConfig.self,
        TransformAEADConfig.self,
        TransformTLSConfig.self,
        TransformWebSocketConfig.self,
        TransformPaddingConfig.self,
        TransformMuxConfig.self,
        ListenReverseConfig.self,
        ConnectReverseConfig.self,
        WireGuardConfig.self,
        DNSFilterConfig.self,
    ])
}
