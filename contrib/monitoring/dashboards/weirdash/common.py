"""What every panel piece shares: the Prometheus data source variable, the label filters, and two panel shapes."""
from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Every agent query is filtered by these variables (see variables()).
AGENT = 'job="weir-agent", instance=~"$instance"'
PIPELINE = AGENT + ', pipeline=~"$pipeline"'


def query(expr, legend="", instant=False, ref="A"):
    target = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DATASOURCE).ref_id(ref)
    return target.instant() if instant else target.range()


def graph(title, targets, unit="short", description="", width=12, height=8, stack=False):
    """A time series panel; `targets` are (expr, legend) pairs."""
    panel = timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit).span(width).height(height)
    if description:
        panel = panel.description(description)
    if stack:
        panel = panel.fill_opacity(30).stacking(common.StackingConfig().mode(StackingMode.NORMAL).group("A"))
    for index, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, ref=chr(ord("A") + index)))
    return panel


def single(title, expr, unit="short", description="", width=4, height=4, legend=""):
    """A stat panel with one instant query."""
    panel = stat.Panel().title(title).datasource(DATASOURCE).unit(unit).span(width).height(height).with_target(query(expr, legend, instant=True))
    return panel.description(description) if description else panel


def variables(agents=True, pipelines=True):
    """The data source, the agents (instance) and, for pipeline dashboards, their pipelines."""
    result = [dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")]
    if not agents:
        return result
    result += [
        dashboard.QueryVariable("instance").label("Agent").datasource(DATASOURCE)
        .query('label_values(up{job="weir-agent"}, instance)').refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*"),
    ]
    if pipelines:
        result.append(
            dashboard.QueryVariable("pipeline").label("Pipeline").datasource(DATASOURCE)
            .query('label_values(weir_pipeline_connections_total{job="weir-agent", instance=~"$instance"}, pipeline)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*"))
    return result


def board(uid, title, description, rows, agents=True, pipelines=True):
    """A dashboard: `rows` are (row title, [panels]) from the pieces in panels/."""
    built = (dashboard.Dashboard(title).uid(uid).description(description).tags(["weir"]).refresh("30s").time("now-1h", "now")
             .timezone("browser").tooltip(1))
    for variable in variables(agents, pipelines):
        built = built.with_variable(variable)
    for row_title, panels in rows:
        built = built.with_row(dashboard.Row(row_title))
        for panel in panels:
            built = built.with_panel(panel)
    return built
