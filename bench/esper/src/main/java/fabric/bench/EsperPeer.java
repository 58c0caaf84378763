package fabric.bench;

import com.espertech.esper.common.client.EPCompiled;
import com.espertech.esper.common.client.configuration.Configuration;
import com.espertech.esper.compiler.client.CompilerArguments;
import com.espertech.esper.compiler.client.EPCompilerProvider;
import com.espertech.esper.runtime.client.EPDeployment;
import com.espertech.esper.runtime.client.EPEventService;
import com.espertech.esper.runtime.client.EPRuntime;
import com.espertech.esper.runtime.client.EPRuntimeProvider;
import com.espertech.esper.runtime.client.EPStatement;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The bundled pattern library in EPL, run over the CEP benchmark's event file on one thread.
 *
 * <pre>java -cp ... fabric.bench.EsperPeer EVENTS_TSV COPIES SERVICES</pre>
 *
 * Each of the five library patterns is deployed COPIES times, copy c restricted to the
 * services svc-k with k % COPIES == c (as bench/cep.py restricts its copies; %S in a filter
 * below is where the restriction goes). Time is the events' own (external clock, advanced to the newest event time
 * seen). Events are read into memory first; the timed part is sending them. Prints one
 * JSON line: events, seconds, events/s, outputs.
 */
public final class EsperPeer {
  /** The library (fabric/schemas/patterns/library.yaml) in EPL, as close as EPL says it. */
  static final String[] LIBRARY = {
    // deploy-then-error-burst: a deploy, then 5 error logs of the same service within 10 minutes
    "select d.service as service from pattern [every d=Ev(type regexp '(deploy|release)\\\\..*'%S) -> "
        + "[5] Ev(type='log.entry' and level in ('ERROR','FATAL') and service=d.service%S) "
        + "where timer:within(10 min)]",
    // latency-slo-breach: p95 of a service's latency over a sliding 5 minutes above 500 ms
    "select service, fabric.bench.EsperPeer.p95(window(value)) as p95 "
        + "from Ev(type='metric.sample' and name in ('latency_ms','latency_p95')%S)#groupwin(service)#time(5 min) "
        + "group by service having fabric.bench.EsperPeer.p95(window(value)) > 500",
    // page-edit-collision: the same page saved five times within a minute
    "select tenant, subject, count(*) as n from Ev(type regexp 'page\\\\.(updated|saved)'%S)"
        + "#groupwin(tenant, subject)#time(1 min) group by tenant, subject having count(*) >= 5",
    // missing-heartbeat: a heartbeat, then none from the same subject for a minute
    "select h.subject as subject from pattern [every h=Ev(type='metric.sample' and name='heartbeat'%S) -> "
        + "(timer:interval(1 min) and not Ev(type='metric.sample' and name='heartbeat' "
        + "and tenant=h.tenant and subject=h.subject%S))]",
    // schema-change-then-query-errors: a table's schema changes, then 3 query errors on it within 15 minutes
    "select c.table as tbl from pattern [every c=Ev(type regexp 'schema\\\\..*' and change in ('altered','dropped')%S) -> "
        + "[3] Ev(type='log.entry' and level='ERROR' and table is not null and table=c.table%S) "
        + "where timer:within(15 min)]",
  };

  /** The 95th percentile of a window's values (nearest rank, as the fabric's matcher computes it). */
  public static double p95(Object[] values) {
    if (values == null || values.length == 0) {
      return 0;
    }
    double[] v = new double[values.length];
    for (int i = 0; i < values.length; i++) {
      v[i] = ((Number) values[i]).doubleValue();
    }
    Arrays.sort(v);
    int rank = (int) Math.ceil(0.95 * v.length) - 1;
    return v[Math.max(0, rank)];
  }

  public static void main(String[] args) throws Exception {
    List<String> lines = Files.readAllLines(Path.of(args[0]));
    int copies = Integer.parseInt(args[1]);
    int services = Integer.parseInt(args[2]);
    String[] header = lines.get(0).split("\t", -1);
    List<Map<String, Object>> events = new ArrayList<>();
    long[] times = new long[lines.size() - 1];
    for (int i = 1; i < lines.size(); i++) {
      String[] f = lines.get(i).split("\t", -1);
      Map<String, Object> ev = new HashMap<>();
      for (int k = 0; k < header.length; k++) {
        if (header[k].equals("time")) {
          times[i - 1] = Long.parseLong(f[k]);
        } else if (header[k].equals("value")) {
          ev.put("value", f[k].isEmpty() ? null : Double.valueOf(f[k]));
        } else {
          ev.put(header[k], f[k].isEmpty() ? null : f[k]);
        }
      }
      events.add(ev);
    }

    Configuration config = new Configuration();
    Map<String, Object> props = new HashMap<>();
    for (String h : header) {
      if (!h.equals("time")) {
        props.put(h, h.equals("value") ? Double.class : String.class);
      }
    }
    config.getCommon().addEventType("Ev", props);
    config.getCommon().addImport(EsperPeer.class);
    config.getRuntime().getThreading().setInternalTimerEnabled(false);
    EPRuntime runtime = EPRuntimeProvider.getRuntime("fabric-bench-" + copies, config);
    EPEventService events0 = runtime.getEventService();
    events0.clockExternal();
    events0.advanceTime(times.length > 0 ? times[0] : 0);
    AtomicLong outputs = new AtomicLong();
    CompilerArguments compilerArgs = new CompilerArguments(config);
    for (int c = 0; c < copies; c++) {
      StringBuilder share = new StringBuilder(" and service in (");
      for (int k = c; k < services; k += copies) {
        share.append(k == c ? "" : ",").append("'svc-").append(k).append("'");
      }
      String restriction = share.append(")").toString();
      for (int p = 0; p < LIBRARY.length; p++) {
        String epl = "@name('p" + p + "-" + c + "') " + LIBRARY[p].replace("%S", restriction);
        EPCompiled compiled = EPCompilerProvider.getCompiler().compile(epl, compilerArgs);
        EPDeployment deployment = runtime.getDeploymentService().deploy(compiled);
        for (EPStatement st : deployment.getStatements()) {
          st.addListener((newData, oldData, s, rt) -> outputs.addAndGet(newData == null ? 0 : newData.length));
        }
      }
    }

    long newest = Long.MIN_VALUE;
    long started = System.nanoTime();
    for (int i = 0; i < times.length; i++) {
      if (times[i] > newest) {
        newest = times[i];
        events0.advanceTime(newest);
      }
      events0.sendEventMap(events.get(i), "Ev");
    }
    double seconds = (System.nanoTime() - started) / 1e9;
    System.out.printf(
        "{\"events\": %d, \"seconds\": %.3f, \"events_per_s\": %.1f, \"outputs\": %d, \"statements\": %d}%n",
        times.length, seconds, times.length / seconds, outputs.get(), copies * LIBRARY.length);
    runtime.destroy();
  }
}
