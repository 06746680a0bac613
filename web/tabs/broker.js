// A SharedWorker that only introduces tabs to the delivery service: the page that runs it
// says {type: "serve"}; every other page that says {type: "connect"} gets one end of a
// fresh MessageChannel ({type: "port"}) and the serving page gets the other ({type: "client"}).
// No delivery logic here: it is Python (DeliveryServer / PortDelivery) at both ends.

let server = null;
const queued = [];

function link(client) {
  const channel = new MessageChannel();
  server.postMessage({ type: "client" }, [channel.port1]);
  client.postMessage({ type: "port" }, [channel.port2]);
}

self.onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = ({ data }) => {
    if (data?.type === "serve") {
      server = port;
      for (const client of queued.splice(0)) link(client);
    } else if (data?.type === "connect") {
      if (server) link(port);
      else queued.push(port);
    }
  };
};
